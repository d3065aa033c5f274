"""The save folder's lock: an exclusive flock on run.lock, held from the start of a run to the
end of its evaluation and report; the file names the holder (run id, pid, host, start)."""
import fcntl
import json
import os
import socket
import time

from ddfm.common import RunError
from ddfm.files import naming


class FolderLock:
    """The file stays after the run: a process that opened it just before an unlink would lock a
    file nobody else sees, and two runs would share the folder. Only a failed start removes it,
    with the folder it created, while holding it; a start that then gets the lock of that unlinked
    file sees that run.lock no longer names it and gives up."""

    def __init__(self, layout):
        self.path = layout.lock
        self.fd = None

    def acquire(self, run_id):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(os.read(fd, 4096))
            os.close(fd)
            raise RunError(f"{self.path.parent}: another sample.py run is using this folder ({holder}); "
                           f"wait for it to finish or choose another --save_dir") from None
        if not _still_named(fd, self.path):  # a failed start removed the file after we opened it
            os.close(fd)
            raise RunError(f"{self.path.parent}: another sample.py run was starting in this folder "
                           f"at the same moment and gave up; run the command again")
        info = {"run": run_id, "pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        self.fd = fd  # held from here: release() closes it even if the write below fails
        with naming(self.path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _still_named(fd, path):
    """Whether the locked file is still the one `path` names."""
    try:
        mine, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (named.st_dev, named.st_ino)


def describe_holder(data):
    try:
        info = json.loads(data)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is just starting"


def holder_run(layout):
    """The run id written into the lock file (torchrun ranks check it is their rank 0's)."""
    try:
        return json.loads(layout.lock.read_text()).get("run")
    except (OSError, ValueError, AttributeError):
        return None
