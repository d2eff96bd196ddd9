"""Tiny sweeps on the aws provider against moto (tests/aws_server.py) with the VM runner (tests/aws_nodes.py)."""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator.run.state import StateStore
from tests.aws_server import MOTO_AMI
from tests.orchestrator.sweeps import only_run, spottune, tiny_sweep, warm_model_cache


def controller_env(moto_url: str) -> dict[str, str]:
    """The controller's environment: every AWS call to moto, with test credentials."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": moto_url, "AWS_EC2_METADATA_DISABLED": "true"}


def aws_tiny_sweep(directory: Path, name: str, moto_url: str, storage: str, max_steps: int, epochs: int = 1,
                   aws: dict | None = None, **sections) -> Path:
    """tests/orchestrator/sweeps.py's tiny sweep on `providers: [aws]` (nodes train on CPU), its storage on moto's
    S3, over `epochs` of the example data (25 steps each)."""
    path = tiny_sweep(directory, name, max_steps=max_steps, storage=storage, storage_endpoint=moto_url,
                      provider_settings={"aws": {**MOTO_AMI, "accelerator": "cpu", **(aws or {})}},
                      **{"resources": {"providers": ["aws"]}, **sections})
    document = yaml.safe_load(path.read_text())
    document["config"]["training"]["epochs"] = epochs
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def submit_aws(spec: Path, state_dir: Path, env: dict[str, str]) -> tuple[str, StateStore]:
    """`spottune submit --detach` of an aws sweep with the controller's environment: its run id and state store."""
    warm_model_cache()
    submitted = spottune("submit", str(spec), "--detach", "--state-dir", str(state_dir), env=env)
    assert submitted.returncode == 0, submitted.stderr
    run_id = only_run(state_dir)
    return run_id, StateStore(state_dir)
