"""Bad inputs end with one clear line, exit status 2, no traceback, and leave earlier results untouched."""
import hashlib
import json
import re
from pathlib import Path

import pytest

from tests.train_core.helpers import run_cli, write_config


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed run whose files every failing command below must leave exactly as they are."""
    directory = tmp_path_factory.mktemp("cli")
    config = write_config(directory, {"training": {"max_steps": 2}})
    result = run_cli("train", str(config))
    assert result.returncode == 0, result.stderr[-2000:]
    return directory


def bad_data(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def malformed_jsonl(d):
    data = bad_data(d, "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"\n')
    return write_config(d, {"data": {"train": str(data), "eval": None}}, "c1.yaml"), r"bad\.jsonl:2: not valid JSON"


def unknown_field(d):
    return write_config(d, {"training": {"max_steps": 2, "lerning_rate": 0.1}}, "c2.yaml"), r"c2\.yaml: field 'training\.lerning_rate': unknown field; accepted fields here: .*learning_rate"


def missing_model(d):
    return write_config(d, {"model": {"name": str(d / "no-such-model")}}, "c3.yaml"), r"model\.name: .*no-such-model.* is not an existing directory or \.gguf file; accepted:"


def unknown_format(d):
    data = bad_data(d, "qa.jsonl", json.dumps({"question": "q", "answer": "a"}) + "\n")
    return write_config(d, {"data": {"train": str(data), "eval": None}}, "c4.yaml"), r"qa\.jsonl:1: unknown row format \(keys: answer, question\); accepted: alpaca"


def empty_dataset(d):
    data = bad_data(d, "empty.jsonl", "\n")
    return write_config(d, {"data": {"train": str(data), "eval": None}}, "c5.yaml"), r"empty\.jsonl: the data set is empty"


def format_name(d):
    return write_config(d, {"data": {"format": "csv"}}, "c6.yaml"), r"c6\.yaml: field 'data\.format': Input should be 'auto', 'alpaca', 'sharegpt', 'messages', 'prompt_completion' or 'text'"


@pytest.mark.parametrize(
    "make", [malformed_jsonl, unknown_field, missing_model, unknown_format, empty_dataset, format_name]
)
def test_bad_input_gives_one_line_and_touches_nothing(finished_run, make):
    before = snapshot(finished_run / "run")
    config, pattern = make(finished_run)
    result = run_cli("train", str(config), "--output-dir", str(finished_run / "run"), "--resume")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    assert re.search(pattern, error_lines[0]), error_lines[0]
    assert snapshot(finished_run / "run") == before


def test_missing_config_file_and_unknown_flag(tmp_path):
    result = run_cli("train", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "absent.yaml: config file not found" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli("train", "--no-such-flag")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bad_data_ends_the_run_before_the_model_is_loaded(finished_run):
    config, _ = malformed_jsonl(finished_run)
    result = run_cli("train", str(config), "--output-dir", str(finished_run / "run"), "--resume")
    assert result.returncode == 2
    assert not [line for line in result.stderr.splitlines() if line.startswith("model:")], result.stderr
