"""What the controller tells the nodes of one attempt to run: written to the attempt's channel as payload.json.

JSON on purpose: the node reads it after booting, possibly another spottune build of the same version, and
validates the train config again (TrainConfig.model_validate) before anything runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from runspec.config import TrainConfig


@dataclass(frozen=True)
class AttemptPayload:
    """Everything a node needs to run one attempt of a trial, whichever provider rented it."""

    run_id: str
    trial_id: str
    attempt: int
    provider: str  # which provider rented the nodes: picks the notice source on the node (local, aws, kubernetes)
    config: TrainConfig  # the attempt's full config, its output_dir the trial's storage prefix
    channel: str  # the attempt's channel prefix (cluster/node/channel.py)
    storage_endpoint: str | None  # S3 endpoint of the run's storage, None for AWS's own
    nodes: int = 1
    gpus_per_node: int = 1  # Ray Train workers per node (one per GPU; CPU slots on the local market)
    use_gpu: bool = True
    ray_token: str | None = None  # Ray's token for a cluster that spans nodes; never in a boot script

    @property
    def name(self) -> str:
        return f"{self.trial_id}-a{self.attempt}"

    @property
    def workers(self) -> int:
        return self.nodes * self.gpus_per_node

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.model_dump(mode="json")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttemptPayload:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {name: value for name, value in data.items() if name in known}
        values["config"] = TrainConfig.model_validate(values["config"])
        return cls(**values)
