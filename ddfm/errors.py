"""The exceptions that mean "bad input or configuration" (one line, exit 2), not a bug."""
from guided_diffusion.checkpoint import CheckpointError

from ddfm.config import ConfigError
from ddfm.io import FusionInputError
from ddfm.messages import RunError, one_line  # noqa: F401  (one_line re-exported: how a user error is printed)

USER_ERRORS = (ConfigError, FusionInputError, RunError, CheckpointError)
