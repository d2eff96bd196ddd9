"""Read instruction rows (alpaca, sharegpt, messages, and TRL's prompt/completion and text) into conversations."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from runspec.errors import DataError

Message = dict[str, str]
Conversation = list[Message]
FormatName = Literal["alpaca", "sharegpt", "messages", "prompt_completion", "text"]

ACCEPTED = (
    "alpaca (instruction/input/output), sharegpt (conversations: [{from, value}]), "
    "messages (messages: [{role, content}]), prompt_completion (prompt/completion) or text"
)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CHAT_ROLES = ("system", "user", "assistant")


def detect_format(row: dict) -> FormatName | None:
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    rows: list[tuple[int, dict]] = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[error.start]:02x} at column "
                                f"{error.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_refuse_constant)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno})") from None
            except RecursionError:
                raise DataError(f"{path}:{number}: JSON nested too deeply to read") from None
            except ValueError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((number, row))
    if not rows:
        raise DataError(f"{path}: the data set is empty (no JSON rows); expected one {ACCEPTED} object per line")
    return rows


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def file_format(rows: list[tuple[str, dict]], format: str) -> FormatName:
    """The configured format, or for auto the one the first row's keys name; rows are (where, row)."""
    if format != "auto":
        return format  # type: ignore[return-value]
    first_where, first_row = rows[0]
    detected = detect_format(first_row)
    if detected is None:
        keys = ", ".join(sorted(first_row)) or "none"
        raise DataError(f"{first_where}: unknown row format (keys: {keys}); accepted: {ACCEPTED}; "
                        "or map other columns with data.columns")
    return detected


def to_conversation(row: dict, format: FormatName, where: str, system_prompt: str | None = None) -> Conversation:
    """One row as a conversation, with the system prompt prepended where the row has none."""
    conversation = CONVERTERS[format](row, where)
    if system_prompt and conversation[0]["role"] != "system":
        conversation = [{"role": "system", "content": system_prompt}, *conversation]
    return conversation


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:  # absent, or an empty cell of a CSV/Parquet column
        return ""
    if value is None:
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def _from_alpaca(row: dict, where: str) -> Conversation:
    if "instruction" not in row or "output" not in row:
        raise DataError(f"{where}: alpaca rows need 'instruction' and 'output' (and optional 'input')")
    instruction = _text(row, "instruction", where)
    extra = _text(row, "input", where, required=False)
    output = _text(row, "output", where)
    if not output.strip():
        raise DataError(f"{where}: field 'output' is empty")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    conversation: Conversation = []
    if isinstance(row.get("system"), str) and row["system"].strip():
        conversation.append({"role": "system", "content": row["system"]})
    return conversation + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _from_sharegpt(row: dict, where: str) -> Conversation:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} objects")
    conversation = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"{where}: conversations[{index}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise DataError(
                f"{where}: conversations[{index}].from is {turn['from']!r}; accepted: {', '.join(SHAREGPT_ROLES)}"
            )
        conversation.append({"role": role, "content": _text(turn, "value", f"{where}: conversations[{index}]")})
    return _checked(conversation, where)


def _from_messages(row: dict, where: str) -> Conversation:
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    conversation = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: messages[{index}] needs 'role' and 'content'")
        if message["role"] not in CHAT_ROLES:
            raise DataError(
                f"{where}: messages[{index}].role is {message['role']!r}; accepted: {', '.join(CHAT_ROLES)}"
            )
        conversation.append(
            {"role": message["role"], "content": _text(message, "content", f"{where}: messages[{index}]")}
        )
    return _checked(conversation, where)


def _checked(conversation: Conversation, where: str) -> Conversation:
    if not any(message["role"] == "assistant" for message in conversation):
        raise DataError(f"{where}: the conversation has no assistant turn to learn from")
    return conversation


CONVERTERS = {"alpaca": _from_alpaca, "sharegpt": _from_sharegpt, "messages": _from_messages}
