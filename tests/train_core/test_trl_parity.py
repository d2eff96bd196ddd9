"""Data sources and TRL formats: the same rows give the same tokens and loss masks from JSONL, Parquet, a saved
dataset and TRL's formats, and spottune's tokens and masks equal those of TRL's own SFTTrainer preparation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runspec.config import DataSettings
from train_core.data.dataset import prepare_data
from runspec.errors import DataError
from train_core.models.loading import load_tokenizer
from train_core.models.sources import resolve_model

REPO = Path(__file__).resolve().parents[2]
ROWS = 12
# ChatML with TRL's {% generation %} markers around what the assistant writes: renders exactly like ChatML.
CHATML_WITH_GENERATION = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def alpaca_rows() -> list[dict]:
    lines = (REPO / "examples" / "data" / "copywriting_train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:ROWS]]


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return resolve_model("builtin:tiny-llama").path


def _prompt(row: dict) -> str:
    return f"{row['instruction']}\n\n{row['input']}" if row.get("input", "").strip() else row["instruction"]


def _samples(train: str, tokenizer_path: str, **settings) -> list[tuple[list[int], list[bool]]]:
    data = prepare_data(DataSettings(train=str(train), max_seq_length=4096, **settings), load_tokenizer(tokenizer_path))
    return [(sample.input_ids, sample.trainable) for sample in data.train]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_jsonl_parquet_saved_dataset_and_trl_formats_give_the_same_tokens_and_masks(alpaca_rows, tiny_path, tmp_path):
    import datasets

    expected = _samples(_write_jsonl(tmp_path / "rows.jsonl", alpaca_rows), tiny_path)
    table = datasets.Dataset.from_list(alpaca_rows)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    (tmp_path / "parts").mkdir()
    table.select(range(6)).to_parquet(str(tmp_path / "parts" / "a.parquet"))
    table.select(range(6, ROWS)).to_parquet(str(tmp_path / "parts" / "b.parquet"))
    table.to_csv(str(tmp_path / "rows.csv"))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "saved"))
    conversational = [{"prompt": [{"role": "user", "content": _prompt(row)}],
                       "completion": [{"role": "assistant", "content": row["output"]}]} for row in alpaca_rows]
    datasets.Dataset.from_list(conversational).to_parquet(str(tmp_path / "trl.parquet"))
    renamed = [{"question": _prompt(row), "answer": row["output"]} for row in alpaca_rows]
    _write_jsonl(tmp_path / "renamed.jsonl", renamed)

    assert len(expected) == ROWS and all(any(mask) and not all(mask[1:]) for _, mask in expected)
    for source in ("rows.parquet", "parts", "rows.csv", "saved", "trl.parquet"):
        assert _samples(tmp_path / source, tiny_path) == expected, source
    mapped = _samples(tmp_path / "renamed.jsonl", tiny_path, columns={"instruction": "question", "output": "answer"})
    assert mapped == expected


def _trl_prepared(rows: list[dict], model_path: str, tmp_path: Path, chat_template: str | None = None,
                  **config) -> list[tuple[list[int], list[bool]]]:
    """Tokens and loss mask (label != -100) from TRL's own SFTTrainer dataset preparation."""
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(model_path)
    if chat_template:
        tokenizer.chat_template = chat_template
    arguments = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, packing=False,
                          use_cpu=True, **config)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path), args=arguments,
                         train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer)
    return [(list(row["input_ids"]), [False] + [label != -100 for label in row["labels"][1:]])
            for row in trainer.train_dataset]


def test_conversational_prompt_completion_equals_trl(alpaca_rows, tiny_path, tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "You write ads."}, {"role": "user", "content": _prompt(row)}],
             "completion": [{"role": "assistant", "content": row["output"]}]} for row in alpaca_rows]
    ours = _samples(_write_jsonl(tmp_path / "pc.jsonl", rows), tiny_path)
    assert ours == _trl_prepared(rows, tiny_path, tmp_path)


def test_standard_prompt_completion_and_text_equal_trl(alpaca_rows, tiny_path, tmp_path):
    rows = [{"prompt": f"Task: {_prompt(row)}\nAnswer: ", "completion": row["output"]} for row in alpaca_rows]
    assert _samples(_write_jsonl(tmp_path / "pc.jsonl", rows), tiny_path) == _trl_prepared(rows, tiny_path, tmp_path)
    texts = [{"text": f"{_prompt(row)}\n{row['output']}"} for row in alpaca_rows]
    ours = _samples(_write_jsonl(tmp_path / "text.jsonl", texts), tiny_path)
    assert all(all(mask[1:]) for _, mask in ours)
    assert ours == _trl_prepared(texts, tiny_path, tmp_path / "text")


def test_messages_equal_trl_with_and_without_assistant_only_loss(alpaca_rows, tiny_path, tmp_path):
    rows = [{"messages": [{"role": "user", "content": _prompt(row)}, {"role": "assistant", "content": row["output"]},
                          {"role": "user", "content": "Shorter, please."},
                          {"role": "assistant", "content": row["output"][:40]}]} for row in alpaca_rows]
    path = _write_jsonl(tmp_path / "m.jsonl", rows)
    assert _samples(path, tiny_path, train_on="all") == _trl_prepared(rows, tiny_path, tmp_path / "all")
    ours = _samples(path, tiny_path, chat_template=CHATML_WITH_GENERATION)
    theirs = _trl_prepared(rows, tiny_path, tmp_path / "assistant", chat_template=CHATML_WITH_GENERATION,
                           assistant_only_loss=True)
    assert ours == theirs and not all(all(mask[1:]) for _, mask in ours)


def test_a_mapped_column_that_does_not_exist_is_one_line(tmp_path):
    path = _write_jsonl(tmp_path / "rows.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"^data\.columns\.output: column 'reply' is not in .*rows\.jsonl; its columns: "
                                         r"answer, question$"):
        _samples(path, resolve_model("builtin:tiny-llama").path, columns={"instruction": "question", "output": "reply"})


def test_a_hub_dataset_id_while_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"^data\.train: 'someone/some-set' looks like a Hub dataset id but the Hub is "
                                         r"offline"):
        _samples("someone/some-set", resolve_model("builtin:tiny-llama").path)


def test_train_with_a_missing_column_is_one_line_and_writes_nothing(tmp_path):
    from tests.train_core.helpers import run_cli, write_config

    config = write_config(tmp_path, {"model": {"name": "builtin:tiny-llama", "quantization": "fp32"},
                                     "data": {"columns": {"output": "answer"}}})
    result = run_cli("train", str(config))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "data.columns.output: column 'answer' is not in" in errors[0]
    assert not [path for path in (tmp_path / "run").rglob("*") if path.is_file()], "no file written"
