"""The GPU check's time budget: the alarm that stops a row when the budget runs out, and the
SIGTERM (an outer `timeout`) / Ctrl-C that stops the plan but keeps what was measured."""
import signal
import time


class RowTimeout(Exception):
    """The time budget ran out inside a row."""


class Terminated(BaseException):
    """SIGTERM (an outer `timeout`) or Ctrl-C: stop, keep and write what was measured."""


def on_alarm(signum, frame):
    raise RowTimeout()


def on_terminate(signum, frame):
    raise Terminated()


def install_handlers():
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)


def stopped_by_alarm(err, deadline):
    """A RowTimeout, also when torch.compile wrapped it (BackendCompilerFailed and the like)."""
    while err is not None:
        if isinstance(err, RowTimeout):
            return True
        err = err.__cause__ or err.__context__
    return time.monotonic() >= deadline
