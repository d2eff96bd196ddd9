"""Sanity checks for the bundled copywriting instruction data set.

Standard library + pytest only, so it runs without torch or a GPU.
"""

import json
import re
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parents[1] / "examples" / "data"
TRAIN = DATA_DIR / "copywriting_train.jsonl"
EVAL = DATA_DIR / "copywriting_eval.jsonl"
KEYS = {"instruction", "input", "output"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def _load(path):
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:  # pragma: no cover - failure path
                pytest.fail(f"{path.name}:{lineno} is not valid JSON: {e}")
    return rows


def _norm(text):
    return " ".join(text.lower().split())


def _key(row):
    return _norm(row["instruction"]) + "\x00" + _norm(row["input"])


def _is_chinese(row):
    return bool(CJK.search(row["output"]))


@pytest.fixture(scope="module")
def train():
    return _load(TRAIN)


@pytest.fixture(scope="module")
def eval_rows():
    return _load(EVAL)


def test_files_exist():
    assert TRAIN.is_file(), TRAIN
    assert EVAL.is_file(), EVAL


@pytest.mark.parametrize("path", [TRAIN, EVAL], ids=["train", "eval"])
def test_row_schema(path):
    rows = _load(path)
    assert rows, f"{path.name} is empty"
    for i, row in enumerate(rows, 1):
        assert isinstance(row, dict), f"{path.name} row {i} is not an object"
        assert set(row) == KEYS, f"{path.name} row {i} keys: {sorted(row)}"
        for k in KEYS:
            assert isinstance(row[k], str), f"{path.name} row {i}: {k} is not a string"
        assert row["instruction"].strip(), f"{path.name} row {i}: empty instruction"
        assert row["output"].strip(), f"{path.name} row {i}: empty output"


def test_split_sizes(train, eval_rows):
    assert len(train) >= 200
    assert len(eval_rows) >= 1


def test_languages(train, eval_rows):
    for name, rows in (("train", train), ("eval", eval_rows)):
        zh = sum(_is_chinese(r) for r in rows)
        en = len(rows) - zh
        assert zh > 0, f"{name} has no Chinese rows"
        assert en > 0, f"{name} has no English rows"
    zh = sum(_is_chinese(r) for r in train)
    assert zh / len(train) >= 0.30, "Chinese share of train below 30%"
    assert (len(train) - zh) / len(train) >= 0.30, "English share of train below 30%"


def test_no_duplicates_within_train(train):
    seen = {}
    for i, row in enumerate(train, 1):
        k = _key(row)
        assert k not in seen, f"train rows {seen[k]} and {i} duplicate instruction+input"
        seen[k] = i


def test_no_duplicates_within_eval(eval_rows):
    keys = [_key(r) for r in eval_rows]
    assert len(keys) == len(set(keys))


def test_no_overlap_between_train_and_eval(train, eval_rows):
    train_keys = {_key(r) for r in train}
    overlap = [r["instruction"] for r in eval_rows if _key(r) in train_keys]
    assert not overlap, f"eval rows also in train: {overlap}"


def test_no_identical_outputs(train, eval_rows):
    outputs = [_norm(r["output"]) for r in train + eval_rows]
    dupes = {o for o in outputs if outputs.count(o) > 1}
    assert not dupes, f"identical outputs: {sorted(dupes)[:3]}"
