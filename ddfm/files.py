"""Atomic file writes, kept free of heavy imports so that figures and reports start fast.

A file is written to a temporary name beside its destination and renamed into place: a reader
never sees half a file and an interrupted write leaves the previous version intact.
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _read_umask():
    """The process umask: it can only be read by setting it, so this runs once, at import."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def naming(path):
    """A failed write() names no file ("[Errno 27] File too large", "No space left on device"):
    within, such an OSError is raised again naming `path`."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


def publish(tmp, path):
    """Move a finished temporary file onto `path` atomically, readable as a plainly created file.

    mkstemp creates its files 0600 whatever the umask, which would leave every output private to
    its owner; the file gets the mode open() would give it (0o666 & ~umask) before the rename.
    """
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def write_atomic(path, save, before_publish=None):
    """Call save(handle) on a temporary file next to `path`, then publish it: never half a file.

    before_publish() runs between the two (sample.py journals the image there, see ddfm.journal).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The .tmp suffix keeps a leftover (after a kill) from being taken for an image by any reader.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp", dir=path.parent)
    try:
        with naming(path), os.fdopen(fd, "wb") as handle:
            save(handle)
        if before_publish is not None:
            before_publish()
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
