import json

import pytest

from train_core.data.sources import load_conversations
from runspec.errors import DataError


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


@pytest.mark.parametrize("line, expected", [
    (b'{"instruction": "caf\xe9", "output": "b"}\n', r"rows\.jsonl:1: not UTF-8 text \(byte 0xe9 at column 21\)"),
    (b'{"instruction": "a", "output": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
     r"rows\.jsonl:1: JSON nested too deeply to read"),
    (b'{"instruction": "a", "output": NaN}\n', r"rows\.jsonl:1: not valid JSON \(NaN is not a JSON value\)"),
    (b'{"conversations": [{"from": ["human"], "value": "a"}, {"from": "gpt", "value": "b"}]}\n',
     r"rows\.jsonl:1: conversations\[0\]\.from is \['human'\]; accepted: system, human"),
])
def test_unreadable_lines_are_one_data_error_naming_the_line(tmp_path, line, expected):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(line + b'{"instruction": "a", "output": "b"}\n')
    with pytest.raises(DataError, match=expected):
        load_conversations(path)
