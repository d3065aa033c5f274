"""sample.py with a test seam, for tests that interrupt a run at a known point (run as a child):

    python tests/seamed_sample.py hold K ...           stop after the K-th image until a signal comes
    python tests/seamed_sample.py kill N ...           SIGKILL itself right after its N-th journal line
    python tests/seamed_sample.py kill-drop N ...      SIGKILL itself before removing its N-th replaced image
    python tests/seamed_sample.py hold-postrun ...     stop in the evaluate/report step until a signal
    python tests/seamed_sample.py pause-mkdir FLAG ... stop in the mkdir of --save_dir (after the start
                                                       saw it missing) until FLAG exists; FLAG.paused
                                                       says it is waiting
    python tests/seamed_sample.py interrupt-import ... SIGINT itself while main() imports ddfm.run

A held child ends when its parent (the test) is gone, so a killed test run leaves none behind.

The production code has no hook: the seam wraps its functions here.
"""
import builtins
import os
import pathlib
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddfm import postrun  # noqa: E402
from ddfm.savefolder import journal, layout, writer  # noqa: E402
from ddfm.savefolder.writer import RunJournal  # noqa: E402

PARENT = os.getppid()


def wait_forever():
    while os.getppid() == PARENT:
        time.sleep(0.05)
    sys.exit("seamed_sample: the test that started this run is gone")


def wait_for(flag):
    Path(f"{flag}.paused").touch()
    while not Path(flag).exists():
        if os.getppid() != PARENT:
            sys.exit("seamed_sample: the test that started this run is gone")
        time.sleep(0.02)


def pause_in_mkdir(flag, save_dir):
    """The first mkdir of the save folder waits for `flag`: the start has seen the folder missing
    and has not made it yet (the window of two starts racing for a new folder)."""
    mkdir, target, paused = pathlib.Path.mkdir, Path(save_dir).absolute(), [False]

    def held(self, *args, **kwargs):
        if not paused[0] and self.absolute() == target:
            paused[0] = True
            wait_for(flag)
        return mkdir(self, *args, **kwargs)
    pathlib.Path.mkdir = held


def interrupt_import(name):
    real_import = builtins.__import__

    def interrupted(module, *args, **kwargs):
        if module == name:
            os.kill(os.getpid(), signal.SIGINT)
        return real_import(module, *args, **kwargs)
    builtins.__import__ = interrupted


def hold_after_images(count):
    write_image, written = RunJournal.write_image, [0]

    def counted(self, *args, **kwargs):
        write_image(self, *args, **kwargs)
        written[0] += 1
        if written[0] >= count:
            wait_forever()
    RunJournal.write_image = counted


def kill_after_lines(count):
    append, lines = journal.append, [0]

    def counted(path, event):
        append(path, event)
        lines[0] += 1
        if lines[0] >= count:
            os.kill(os.getpid(), signal.SIGKILL)
    journal.append = counted


def kill_before_drops(count):
    drop, drops = layout.drop, [0]

    def counted(*args):
        drops[0] += 1
        if drops[0] >= count:
            os.kill(os.getpid(), signal.SIGKILL)
        drop(*args)
    writer.folder.drop = counted


def hold_in_postrun():
    step = postrun.evaluate_and_report

    def held(*args, **kwargs):
        print("in the post-run step", file=sys.stderr, flush=True)
        wait_forever()
        return step(*args, **kwargs)
    postrun.evaluate_and_report = held


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "hold":
        hold_after_images(int(sys.argv[2]))
    elif mode == "kill":
        kill_after_lines(int(sys.argv[2]))
    elif mode == "kill-drop":
        kill_before_drops(int(sys.argv[2]))
    elif mode == "pause-mkdir":
        pause_in_mkdir(sys.argv[2], sys.argv[sys.argv.index("--save_dir") + 1])
    elif mode == "interrupt-import":
        interrupt_import("ddfm.run")
    else:
        hold_in_postrun()
    import sample
    sys.exit(sample.main(sys.argv[2 if mode in ("hold-postrun", "interrupt-import") else 3:]))
