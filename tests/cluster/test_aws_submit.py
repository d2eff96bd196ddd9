"""Bad `aws:` settings fail `spottune submit` in one line naming the field, before anything is registered or
launched (checked against moto's EC2 through the fault proxy, which records every call)."""
from __future__ import annotations

import pytest

from orchestrator.run.state import StateStore
from tests.aws_server import MOTO_AMI, PLANTED_SECRET, moto_s3
from tests.orchestrator.sweeps import spottune, tiny_sweep

CASES = {
    "unknown region": ({"regions": ["us-moon-1"]}, "s3", "aws.regions: unknown region 'us-moon-1'; accepted: "),
    "AMI not found": ({"ami": "ami-0123456789abcdef0"}, "s3", "aws.ami: AMI 'ami-0123456789abcdef0' not found in "
                                                              "us-east-1"),
    "subnet missing": ({"subnets": ["subnet-0badbadbadbadbad0"]}, "s3",
                       "aws.subnets: 'subnet-0badbadbadbadbad0' not found in any configured region"),
    "storage not on S3": ({}, "file", "storage: aws nodes reach the run's storage over S3; use an s3:// URI"),
}


@pytest.mark.parametrize("settings, storage, expected", CASES.values(), ids=CASES.keys())
def test_bad_aws_settings_fail_submit_in_one_line(ec2, moto, tmp_path, settings, storage, expected):
    moto_s3(moto).create_bucket(Bucket="runs")
    location = {"storage": "s3://runs/sweeps", "storage_endpoint": moto.url} if storage == "s3" else {}
    spec = tiny_sweep(tmp_path, "bad", resources={"providers": ["aws"]},
                      provider_settings={"aws": {**MOTO_AMI, **settings}}, **location)
    result = spottune("submit", str(spec), "--detach", "--state-dir", str(tmp_path / "state"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("spottune submit: error: ") and f"{spec}: {expected}" in lines[0], lines[0]
    assert PLANTED_SECRET not in result.stderr
    assert StateStore(tmp_path / "state").runs() == [] and "RunInstances" not in ec2.actions()


def test_no_credentials_fail_submit_in_one_line(ec2, moto, tmp_path, monkeypatch):
    moto_s3(moto).create_bucket(Bucket="runs")
    spec = tiny_sweep(tmp_path, "nocreds", resources={"providers": ["aws"]}, storage="s3://runs/sweeps",
                      storage_endpoint=moto.url, provider_settings={"aws": MOTO_AMI})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    result = spottune("submit", str(spec), "--detach", "--state-dir", str(tmp_path / "state"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "credentials" in lines[0].lower(), lines[0]
    assert StateStore(tmp_path / "state").runs() == [] and "RunInstances" not in ec2.actions()
