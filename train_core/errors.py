"""User-facing errors of training: each carries one line that names the input, the field and what is accepted."""
from runspec.errors import UserError


class TrainingDiverged(UserError):
    """The loss, the gradients or the weights stopped being finite numbers; nothing after it is committed."""


class ModelSourceError(UserError):
    """A model name, path or file cannot be resolved."""
