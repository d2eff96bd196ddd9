"""What the aws provider gives its nodes and reads back from them: the boot script (user-data) that installs the
run's wheel and starts the node entry point, and the preemption notice the node posts in its attempt channel.

Both go through the run's storage, as the node contract lays it out: the attempt's payload at
`{storage}/{run}/{trial}/attempts/{attempt}/payload.json`, the wheel at `{storage}/{run}/node/`, and a node's
notice in the same attempt prefix (cluster/node/channel.py). The controller never needs an address of a node.
"""
from __future__ import annotations

from cluster.errors import ClusterError
from cluster.node.boot import boot_script, wheel_install
from cluster.node.channel import AttemptChannel
from cluster.provider import LaunchSpec, Node
from cluster.providers.aws_wheel import NodeWheel
from cluster.storage import open_store
from cost_models.catalog import Offer


def run_prefix(spec: LaunchSpec) -> str:
    """`{storage}/{run}` of the attempt, from its payload URI."""
    marker = f"/{spec.run_id}/{spec.trial_id}/attempts/{spec.attempt}/"
    head, found, _ = spec.payload.partition(marker)
    if not found:
        raise ClusterError(f"aws: the payload {spec.payload!r} is not under {{storage}}{marker}; nodes find the "
                           "run's wheel beside it")
    return f"{head}/{spec.run_id}"


def attempt_prefix_of(spec: LaunchSpec) -> str:
    """The attempt's channel prefix: where its payload lives."""
    return spec.payload.rsplit("/", 1)[0]


class WheelBootScript:
    """User-data for a node: install the run's wheel (uploaded on first use), then run the node entry point."""

    def __init__(self, wheel: NodeWheel) -> None:
        self.wheel = wheel

    def __call__(self, offer: Offer, spec: LaunchSpec) -> str:
        if not spec.payload.startswith("s3://"):
            raise ClusterError(f"aws: nodes reach the run's storage over S3; storage must be an s3:// URI, not "
                               f"{spec.payload.rsplit('/', 5)[0]!r}")
        wheel_uri = self.wheel.uri(run_prefix(spec), spec.storage_endpoint)
        return boot_script(spec.payload, spec.storage_endpoint, wheel_install(wheel_uri))


class ChannelNoticeReader:
    """The earliest deadline any node of an attempt posted in its channel, or None."""

    def __init__(self) -> None:
        self._channels: dict[str, AttemptChannel] = {}

    def __call__(self, node: Node) -> float | None:
        if node.id not in self._channels:
            prefix = attempt_prefix_of(node.spec)
            self._channels[node.id] = AttemptChannel(open_store(prefix, node.spec.storage_endpoint))
        return self._channels[node.id].notice_deadline()

    def forget(self, node: Node) -> None:
        self._channels.pop(node.id, None)
