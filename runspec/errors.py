"""User-facing errors of a run's description: each carries one line that names the input, the field and what is accepted."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message as one line, with no traceback."""


class ConfigError(UserError):
    """A config file or config field is invalid."""


class DataError(UserError):
    """A data set file or row is invalid."""
