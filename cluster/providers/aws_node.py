"""What the aws provider gives its nodes: the boot script (user-data) that installs the run's wheel and starts the
node entry point on the attempt's payload.

Both live in the run's storage, as the node contract lays it out: the attempt's payload at
`{storage}/{run}/{trial}/attempts/{attempt}/payload.json` and the wheel at `{storage}/{run}/node/`. What a node
says back (records, heartbeats, its preemption notice, the outcome) the controller reads from the attempt's
channel itself (orchestrator/run/runner.py), for every provider alike.
"""
from __future__ import annotations

from cluster.errors import ClusterError
from cluster.node.boot import boot_script, wheel_install
from cluster.provider import LaunchSpec
from cluster.providers.aws_wheel import NodeWheel
from cost_models.catalog import Offer


def run_prefix(spec: LaunchSpec) -> str:
    """`{storage}/{run}` of the attempt, from its payload URI."""
    marker = f"/{spec.run_id}/{spec.trial_id}/attempts/{spec.attempt}/"
    head, found, _ = spec.payload.partition(marker)
    if not found:
        raise ClusterError(f"aws: the payload {spec.payload!r} is not under {{storage}}{marker}; nodes find the "
                           "run's wheel beside it")
    return f"{head}/{spec.run_id}"


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
