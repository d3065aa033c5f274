"""compare.py with a test seam, for tests that kill a comparison at a known point (run as a child):

    python tests/seamed_compare.py kill-journal N ...   SIGKILL itself right after its N-th journal line
    python tests/seamed_compare.py kill-score N ...     SIGKILL itself right after caching its N-th score
    python tests/seamed_compare.py kill-compact 0 ...   SIGKILL itself when the compacted score cache is
                                                        written, before it is renamed over the old one

The production code has no hook: the seam wraps its functions here (run with --jobs 1, so the
scores are cached in this process).
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddfm import files  # noqa: E402
from ddfm.compare import scoring  # noqa: E402
from ddfm.savefolder import journal  # noqa: E402


def kill_after(owner, name, count):
    real, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        result = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] >= count:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(owner, name, counted)


if __name__ == "__main__":
    mode, count = sys.argv[1], int(sys.argv[2])
    if mode == "kill-journal":
        kill_after(journal, "append", count)
    elif mode == "kill-compact":
        real_publish = files.publish

        def publish(tmp, path):
            if Path(path).name == scoring.CACHE:
                os.kill(os.getpid(), signal.SIGKILL)
            real_publish(tmp, path)
        files.publish = publish
    else:
        kill_after(scoring.ScoreCache, "add", count)
    import compare
    sys.exit(compare.main(sys.argv[3:]))
