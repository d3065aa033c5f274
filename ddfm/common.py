"""What every room of the package needs: the errors that mean "bad input or configuration" (one
line, not a traceback), how such an error is printed, and the default seed.

A leaf: it imports nothing of the project, so the light tools (evaluate.py, figure.py, the
metrics) and the methods can use it without importing torch or the run driver.
"""

# The seed when a diffusion config names none: the official code's.
DEFAULT_SEED = 3407


class ConfigError(ValueError):
    """A configuration problem, reported as one line (exit code 2)."""


class RunError(ValueError):
    """A problem that stops the whole run (bad folders, a save folder that would mix or is in
    use), reported as one line (exit code 2)."""


class FusionInputError(ValueError):
    """Bad input (a file, a pair or a folder), reported as one line naming it."""


def one_line(err):
    """The first line of an error's message, or the error's type name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def __getattr__(name):
    # USER_ERRORS: every error that is the user's (one line, exit 2), the checkpoint's included;
    # built on first use because guided_diffusion.checkpoint imports torch.
    if name == "USER_ERRORS":
        from guided_diffusion.checkpoint import CheckpointError
        return (ConfigError, FusionInputError, RunError, CheckpointError)
    raise AttributeError(f"module 'ddfm.common' has no attribute {name!r}")
