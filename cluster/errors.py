"""User-facing cluster errors (storage URIs, providers, capacity)."""


class ClusterError(Exception):
    """A storage URI, provider setting or capacity request is unusable; the message is one line."""
