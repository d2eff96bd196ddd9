import pytest

from train_core.config import load_config
from train_core.errors import ConfigError


def test_unknown_field_names_file_field_and_accepted(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {train: x.jsonl}\ntraining: {learning_rat: 0.1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "training.learning_rat" in message
    assert "learning_rate" in message and "\n" not in message


def test_bad_value_and_missing_section(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {train: x.jsonl}\nlora: {r: 0}\n")
    with pytest.raises(ConfigError, match=r"lora\.r"):
        load_config(path)
    path.write_text("model: {name: builtin:tiny-llama}\n")
    with pytest.raises(ConfigError, match=r"field 'data': required field is missing"):
        load_config(path)


def test_yaml_syntax_error_gives_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: [a\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_config(path)


def test_micro_batch_must_divide_batch(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {train: x.jsonl}\ntraining: {batch_size: 8, micro_batch_size: 3}\n")
    with pytest.raises(ConfigError, match="must divide"):
        load_config(path)


def test_fingerprint_ignores_scheduling_only_settings(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("data: {train: x.jsonl}\ntraining: {batch_size: 8, micro_batch_size: 2}\n")
    first = load_config(path)
    path.write_text(
        "data: {train: x.jsonl}\ntraining: {batch_size: 8, micro_batch_size: 4, activation_checkpointing: full}\n"
        "checkpoint: {every_steps: 3}\noutput_dir: elsewhere\n"
    )
    assert load_config(path).fingerprint() == first.fingerprint()
    path.write_text("data: {train: x.jsonl}\ntraining: {batch_size: 8, learning_rate: 0.1}\n")
    assert load_config(path).fingerprint() != first.fingerprint()
