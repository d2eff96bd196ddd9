"""Credentials in a storage URI or endpoint are refused in one line that names the environment variables to
use instead, and never repeats the secret: not on the terminal, not in the state database, not in a log."""
from __future__ import annotations

import pytest
import yaml

from orchestrator.cli import main
from tests.orchestrator.sweeps import TRAIN_DATA, tiny_sweep

SECRET = "s3cr3t-VALUE"
ENV_HINT = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def _one_line_without_the_secret(captured, command: str, source: str) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"spottune {command}: error: {source}"), captured.err
    assert SECRET not in captured.err and SECRET not in captured.out
    assert ENV_HINT in lines[0] and "AWS_ENDPOINT_URL_S3" in lines[0]
    return lines[0]


SPEC_CASES = {
    "storage_endpoint": ({"storage_endpoint": f"http://admin:{SECRET}@127.0.0.1:8333"},
                         "field 'storage_endpoint': credentials do not belong in a URI (http://***@127.0.0.1:8333)"),
    "storage": ({"storage": f"s3://AKIAEXAMPLE:{SECRET}@bucket-1/sweeps"},
                "field 'storage': credentials do not belong in a URI (s3://***@bucket-1/sweeps)"),
    "trial output_dir": ({"config": {"output_dir": f"s3://AKIAEXAMPLE:{SECRET}@bucket-1/out"}},
                         "field 'config.output_dir': credentials do not belong in a URI"),
}


@pytest.mark.parametrize("command", ["submit", "plan"])
@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_sweep_spec_with_credentials_is_refused(case, command, tmp_path, capsys):
    changes, expected = SPEC_CASES[case]
    path = tiny_sweep(tmp_path, "creds")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    state_dir = tmp_path / "state"
    arguments = [command, str(path)] + (["--state-dir", str(state_dir)] if command == "submit" else [])
    assert main(arguments) == 2
    line = _one_line_without_the_secret(capsys.readouterr(), command, str(path))
    assert expected in line
    assert not state_dir.exists(), "nothing may be registered"


def _train_config(tmp_path, output_dir: str):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
        "data": {"train": str(TRAIN_DATA), "max_seq_length": 64},
        "training": {"max_steps": 1, "batch_size": 2},
        "output_dir": output_dir,
    }), encoding="utf-8")
    return path


def test_train_config_output_dir_with_credentials_is_refused(tmp_path, capsys):
    path = _train_config(tmp_path, f"s3://AKIAEXAMPLE:{SECRET}@bucket-1/out")
    assert main(["train", str(path)]) == 2
    line = _one_line_without_the_secret(capsys.readouterr(), "train", str(path))
    assert "field 'output_dir': credentials do not belong in a URI (s3://***@bucket-1/out)" in line


@pytest.mark.parametrize("flag", [f"s3://AKIAEXAMPLE:{SECRET}@bucket-1/out", f"file://user:{SECRET}@host/out"])
def test_output_dir_flag_with_credentials_is_refused(flag, tmp_path, capsys):
    path = _train_config(tmp_path, str(tmp_path / "out"))
    assert main(["train", str(path), "--output-dir", flag]) == 2
    line = _one_line_without_the_secret(capsys.readouterr(), "train", "--output-dir")
    assert "credentials do not belong in a URI" in line
    assert not (tmp_path / "out").exists() and not any(tmp_path.glob("*host*"))
