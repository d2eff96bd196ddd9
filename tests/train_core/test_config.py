import pytest

from runspec.config import load_config
from runspec.errors import ConfigError


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


@pytest.mark.parametrize("text, expected", [
    ("data: {train: x.jsonl}\ntraining: {learning_rate: .inf}\n",
     r"field 'training\.learning_rate': Input should be a finite number"),
    ("data: {train: x.jsonl}\ntraining: {batch_size: true}\n", r"field 'training\.batch_size': Input should be a valid "
                                                               r"integer \(got True\)"),
    ("data: {train: x.jsonl}\ntraining: {batch_size: 8.0}\n", r"field 'training\.batch_size': Input should be a valid "
                                                              r"integer \(got 8\.0\)"),
    ("data: {train: x.jsonl}\ntraining: {max_steps: 1000000000000}\n",
     r"field 'training\.max_steps': Input should be less than or equal to 10000000"),
    ("data: {train: x.jsonl}\ntraining: {seed: 1180591620717411303424}\n",
     r"field 'training\.seed': Input should be less than or equal to 4294967295"),
    ("data: {train: x.jsonl, packing: 1}\n", r"field 'data\.packing': Input should be a valid boolean"),
    ("data: {train: x.jsonl, chat_template: '{% for m in messages %}'}\n",
     r"field 'data\.chat_template': not a valid Jinja template \(template line 1: Unexpected end of template"),
    ("data: {train: x.jsonl}\ndata: {train: y.jsonl}\n", r"bad\.yaml: line 2: duplicate key 'data'; each key may "
                                                         r"appear once"),
    ("a: &a [1, 2]\ndata: {train: x.jsonl}\nlora: *a\n", r"bad\.yaml: line 3: YAML aliases \(\*name\) are not "
                                                         r"accepted"),
    ("data: " + "[" * 40 + "]" * 40 + "\n", r"bad\.yaml: line 1: nested deeper than 32 levels"),
    ("# " + "x" * (1 << 20) + "\n", r"bad\.yaml: larger than 1 MiB"),
])
def test_numbers_are_finite_bounded_and_strict_and_yaml_is_guarded(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_non_utf8_yaml_names_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"data: {train: x.jsonl}\nmodel: {name: caf\xe9}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 2: not UTF-8 text \(byte 0xe9\); save it as UTF-8"):
        load_config(path)
