"""The exceptions that mean "bad input or configuration" (one line, exit 2), not a bug."""
from guided_diffusion.checkpoint import CheckpointError

from ddfm.config import ConfigError
from ddfm.io import FusionInputError
from ddfm.run import RunError

USER_ERRORS = (ConfigError, FusionInputError, RunError, CheckpointError)


def one_line(err):
    """The first line of an error's message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
