import json

import pytest

from train_core.data.formats import load_conversations
from train_core.errors import DataError


def write_rows(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_three_formats_are_detected_and_normalised(tmp_path):
    alpaca = write_rows(tmp_path / "a.jsonl", [{"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}])
    sharegpt = write_rows(
        tmp_path / "s.jsonl",
        [{"conversations": [{"from": "system", "value": "Be brief"}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
    )
    messages = write_rows(
        tmp_path / "m.jsonl",
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
    )
    conversations, name = load_conversations(alpaca)
    assert name == "alpaca"
    assert conversations[0] == [{"role": "user", "content": "Say hi\n\nto Bob"}, {"role": "assistant", "content": "Hi Bob"}]
    conversations, name = load_conversations(sharegpt)
    assert name == "sharegpt" and [m["role"] for m in conversations[0]] == ["system", "user", "assistant"]
    conversations, name = load_conversations(messages, system_prompt="You write ads.")
    assert name == "messages" and conversations[0][0] == {"role": "system", "content": "You write ads."}


def test_malformed_line_is_named(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, "", '{"instruction": "c", "output": }'])
    with pytest.raises(DataError, match=r"d\.jsonl:3: not valid JSON"):
        load_conversations(path)


def test_unknown_format_lists_accepted(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: unknown row format \(keys: answer, question\); accepted: alpaca"):
        load_conversations(path)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_conversations(empty)
    with pytest.raises(DataError, match="not found"):
        load_conversations(tmp_path / "nope.jsonl")


def test_row_level_problems_name_the_line(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: field 'output' must be a string"):
        load_conversations(path)
    path = write_rows(tmp_path / "d.jsonl", [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: messages\[0\]\.role is 'robot'; accepted: system, user, assistant"):
        load_conversations(path)
    path = write_rows(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(DataError, match="no assistant turn"):
        load_conversations(path)
