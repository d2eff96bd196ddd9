"""The wheel an EC2 node installs: built from this source tree once per source hash, installable on its own
(--no-deps --target, as the end-to-end fixture installs it), and uploaded once per run under {run}/node/."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import ClusterError
from cluster.providers.aws_wheel import PROJECT_FILES, NodeWheel, build_wheel, source_packages
from tests.aws_server import moto_s3

REPO = Path(__file__).resolve().parents[2]


def _copy_sources(target: Path) -> Path:
    target.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, target / name)
    for package in source_packages(REPO):
        shutil.copytree(REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_the_wheel_installs_on_its_own_and_runs_the_cli_from_there(tmp_path):
    wheel = build_wheel(tmp_path / "cache")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import orchestrator.cli, cluster.node.imds, cost_models.catalog as c, sys\n"
            "print(orchestrator.cli.__file__)\n"
            "print(len([o for o in c.list_offers(['aws']) if o.instance_type == 'g5.xlarge']))\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    cli_file, g5_rows = result.stdout.split()
    assert Path(cli_file).is_relative_to(target), "imported from the installed wheel, not the source tree"
    assert int(g5_rows) > 0, "the catalog's data files are in the wheel"


def test_the_wheel_is_built_once_per_source_hash(tmp_path):
    root = _copy_sources(tmp_path / "src")
    cache = tmp_path / "cache"
    first = build_wheel(cache, root)
    stamp = first.stat().st_mtime_ns
    assert build_wheel(cache, root) == first and first.stat().st_mtime_ns == stamp, "same sources: the cached wheel"
    (root / "cluster" / "errors.py").write_text((root / "cluster" / "errors.py").read_text() + "\n# changed\n")
    second = build_wheel(cache, root)
    assert second != first and second.parent.parent == first.parent.parent
    assert (root / "build").exists() is False and not list(root.glob("*.egg-info")), "the source tree stays clean"


def test_a_tree_without_pyproject_is_one_line(tmp_path):
    with pytest.raises(ClusterError) as refused:
        build_wheel(tmp_path / "cache", tmp_path)
    assert str(refused.value).startswith(f"aws: spottune is not running from a source tree ({tmp_path} has no "
                                         "pyproject.toml)")
    assert "\n" not in str(refused.value)


def test_the_wheel_is_uploaded_once_per_run_under_its_node_prefix(tmp_path, moto, monkeypatch):
    moto.reset()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3 = moto_s3(moto)
    s3.create_bucket(Bucket="runs")
    wheels = NodeWheel(tmp_path / "cache")
    uri = wheels.uri("s3://runs/sweeps/run-1", moto.url)
    local = build_wheel(tmp_path / "cache")
    assert uri == f"s3://runs/sweeps/run-1/node/{local.name}"
    key = f"sweeps/run-1/node/{local.name}"
    assert s3.get_object(Bucket="runs", Key=key)["Body"].read() == local.read_bytes()
    s3.delete_object(Bucket="runs", Key=key)
    assert wheels.uri("s3://runs/sweeps/run-1", moto.url) == uri
    assert "Contents" not in s3.list_objects_v2(Bucket="runs", Prefix="sweeps/run-1/"), "uploaded once per run"
    other = wheels.uri(f"file://{tmp_path}/runs/run-2")
    assert other == f"file://{tmp_path}/runs/run-2/node/{local.name}"
    assert (tmp_path / "runs" / "run-2" / "node" / local.name).read_bytes() == local.read_bytes()
