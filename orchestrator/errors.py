"""User-facing orchestrator errors (sweep specs, run names, state)."""


class SpecError(Exception):
    """A sweep spec or CLI argument is invalid; the message is one line naming file, field and what is accepted."""
