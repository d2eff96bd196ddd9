"""User-facing errors: each carries one line that names the input, the field and what is accepted."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints its message as one line, with no traceback."""


class ConfigError(UserError):
    """A config file or config field is invalid."""


class DataError(UserError):
    """A data set file or row is invalid."""


class TrainingDiverged(UserError):
    """The loss, the gradients or the weights stopped being finite numbers; nothing after it is committed."""


class ModelSourceError(UserError):
    """A model name, path or file cannot be resolved."""
