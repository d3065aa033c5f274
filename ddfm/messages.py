"""One-line messages for the user: the first line of an error's text.

A leaf module (no project imports), so that the light tools (evaluate.py, figure.py, the metrics)
can use it without importing torch or the run driver, which ``ddfm.errors`` needs for its list of
user errors.
"""


class ConfigError(ValueError):
    """A configuration problem, reported as one line (defined in this leaf so that the method
    modules can raise it without importing the configuration loader)."""


class RunError(ValueError):
    """A problem that stops the whole run (bad folders, a save folder that would mix or is in
    use), reported as one line."""


def one_line(err):
    """The first line of an error's message, or the error's type name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
