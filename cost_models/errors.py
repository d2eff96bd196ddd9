"""The one user-facing error of the estimators."""


class EstimateError(Exception):
    """Bad estimator input (unknown GPU, model or impossible job); the message is one line naming the field
    and what is accepted. The CLI prints it without a traceback."""
