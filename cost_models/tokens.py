"""Token statistics of a training data set: real rows are far shorter than max_seq_length, packing changes
the count. Renders each conversation with the model's chat template (jinja2), tokenizes with the model's
tokenizer.json (`tokenizers`, no torch) when one is on disk, and packs like the trainer (first fit).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from cost_models.errors import EstimateError
from cost_models.shape import RowStats

SAMPLE_ROWS = 4000  # rows read from large files; counts are scaled to the whole file
CHARS_PER_TOKEN = 3.8  # EST for English text when no tokenizer is available
OPEN_BINS = 64
CACHE_VERSION = 1  # bump when the counting changes
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer_json: Path | None
    chat_template: str | None
    special: tuple[tuple[str, str], ...]  # (name, token) such as ("eos_token", "<|im_end|>")


def tokenizer_files(model_dir: Path | None) -> TokenizerFiles:
    """tokenizer.json and the chat template of a Hugging Face model directory (None: no tokenizer)."""
    if model_dir is None or not (model_dir / "tokenizer.json").is_file():
        return TokenizerFiles(None, None, ())
    template = None
    special: list[tuple[str, str]] = []
    config_path = model_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        template = config.get("chat_template") if isinstance(config.get("chat_template"), str) else None
        for name in ("bos_token", "eos_token"):
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                special.append((name, value))
    if (model_dir / "chat_template.jinja").is_file():
        template = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return TokenizerFiles(model_dir / "tokenizer.json", template, tuple(special))


def _conversation(row: object, where: str, system_prompt: str | None) -> list[dict[str, str]]:
    if not isinstance(row, dict):
        raise EstimateError(f"{where}: expected a JSON object per line")
    if "messages" in row and isinstance(row["messages"], list):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in row["messages"]
                    if isinstance(m, dict)]
    elif "conversations" in row and isinstance(row["conversations"], list):
        messages = [{"role": SHAREGPT_ROLES.get(str(t.get("from")), "user"), "content": str(t.get("value", ""))}
                    for t in row["conversations"] if isinstance(t, dict)]
    elif "instruction" in row and "output" in row:
        prompt = str(row["instruction"])
        if str(row.get("input") or "").strip():
            prompt += "\n\n" + str(row["input"])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages.insert(0, {"role": "system", "content": row["system"]})
    elif "prompt" in row and "completion" in row:  # TRL's; plain-text ones counted as one chat turn each
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))}
                        for m in prompt + completion if isinstance(m, dict)]
        else:
            messages = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": str(completion)}]
    elif "text" in row:
        messages = [{"role": "assistant", "content": str(row["text"])}]
    else:
        raise EstimateError(f"{where}: unknown row format (keys: {', '.join(sorted(row)) or 'none'}); accepted: "
                            "alpaca (instruction/input/output), sharegpt (conversations), messages, "
                            "prompt/completion or text")
    if system_prompt and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _read_rows(path: Path, system_prompt: str | None) -> tuple[list[list[dict[str, str]]], int]:
    """A sample of conversations (all of a small file) and the number of rows in the file."""
    if not path.is_file():
        raise EstimateError(f"data.train: {path} not found")
    with open(path, encoding="utf-8") as handle:
        lines = [(number, line) for number, line in enumerate(handle, 1) if line.strip()]
    if not lines:
        raise EstimateError(f"{path}: the data set is empty")
    picked = lines if len(lines) <= SAMPLE_ROWS else random.Random(0).sample(lines, SAMPLE_ROWS)
    conversations = []
    for number, line in picked:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise EstimateError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        conversations.append(_conversation(row, f"{path}:{number}", system_prompt))
    return conversations, len(lines)


def _renderer(template: str, special: tuple[tuple[str, str], ...]):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(template)
    return lambda messages: compiled.render(messages=messages, add_generation_prompt=False, **dict(special))


def _pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit over a window of open rows, in a shuffled order (as the trainer packs)."""
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    closed: list[list[int]] = []
    open_rows: list[list[int]] = []  # [used, index, index, ...]
    for index in order:
        for row in open_rows:
            if row[0] + lengths[index] <= capacity:
                row[0] += lengths[index]
                row.append(index)
                break
        else:
            open_rows.append([lengths[index], index])
            if len(open_rows) > OPEN_BINS:
                closed.append(open_rows.pop(0))
    return closed + open_rows


def _reply_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of the assistant replies in the rendered text (each through its end-of-turn marker)."""
    spans, cursor = [], 0
    for message in messages:
        start = text.find(message["content"], cursor)
        if start < 0:
            continue
        cursor = start + len(message["content"])
        if message["role"] == "assistant":
            end_of_turn = text.find("\n", cursor)
            spans.append((start, cursor + 1 if end_of_turn < 0 else end_of_turn))
    return spans


def _lengths(texts: list[str], spans: list[list[tuple[int, int]]], tokenizer: TokenizerFiles):
    """(tokens, tokens inside reply spans) per text, and how they were counted."""
    if tokenizer.tokenizer_json is None:
        lengths = [max(1, round(len(text) / CHARS_PER_TOKEN)) for text in texts]
        replies = [round(sum(end - start for start, end in text_spans) / CHARS_PER_TOKEN) for text_spans in spans]
        return lengths, replies, f"estimated at {CHARS_PER_TOKEN} characters per token (no tokenizer on disk)"
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_file(str(tokenizer.tokenizer_json))
    lengths, replies = [], []
    for encoding, text_spans in zip(encoder.encode_batch(texts, add_special_tokens=False), spans):
        lengths.append(len(encoding.ids))
        replies.append(sum(
            1 for start, end in encoding.offsets
            if end > start and any(a <= start and end <= b for a, b in text_spans)
        ))
    return lengths, replies, f"tokenized with {tokenizer.tokenizer_json.parent.name}"


def _compute_row_stats(
    path: str, tokenizer: TokenizerFiles, chat_template: str, system_prompt: str | None, max_seq_length: int,
    packing: bool, train_on: str,
) -> RowStats:
    conversations, total_rows = _read_rows(Path(path), system_prompt)
    if chat_template == "auto":
        template = tokenizer.chat_template or CHATML
    elif chat_template == "chatml":
        template = CHATML
    else:
        template = chat_template
    render = _renderer(template, tokenizer.special)
    try:
        texts = [render(messages) for messages in conversations]
    except Exception as error:  # jinja2 raises many kinds for a broken template
        raise EstimateError(f"data.chat_template: cannot render {path} with it ({error})") from None
    spans = [_reply_spans(text, messages) for text, messages in zip(texts, conversations)]
    lengths, reply_lengths, method = _lengths(texts, spans, tokenizer)
    kept, targets = [], []
    for length, reply in zip(lengths, reply_lengths):
        length = min(length, max_seq_length)
        target = length - 1 if train_on == "all" else min(length - 1, reply)
        if target > 0:
            kept.append(length)
            targets.append(target)
    if not kept:
        raise EstimateError(f"{path}: no sample has a target token within max_seq_length={max_seq_length}")
    rows = _pack(kept, max_seq_length) if packing else [[length, 0] for length in kept]
    row_tokens = [row[0] for row in rows]
    return RowStats(
        mean_tokens=sum(row_tokens) / len(rows), max_tokens=max(row_tokens),
        mean_samples=len(kept) / len(rows), target_fraction=sum(targets) / sum(kept),
        rows=max(1, round(len(rows) * total_rows / len(conversations))),
        source=f"{Path(path).name}: {total_rows} rows, {method}, {'packed' if packing else 'one sample per row'}",
    )


def _stamp(path: Path | None) -> list:
    if path is None or not path.is_file():
        return [None]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, int(stat.st_mtime)]


@lru_cache(maxsize=64)
def dataset_row_stats(
    path: str | Path,
    model_dir: Path | None,
    max_seq_length: int,
    packing: bool,
    train_on: str = "assistant",
    chat_template: str = "auto",
    system_prompt: str | None = None,
    cache_dir: Path | None = None,
) -> RowStats:
    """Rows per epoch and tokens per row of a JSONL data set as the trainer will see them.

    Kept per process and, with cache_dir, on disk keyed by the files' sizes and times and the settings."""
    path = Path(path)
    if not path.is_file():
        raise EstimateError(f"data.train: {path} not found")
    tokenizer = tokenizer_files(model_dir)
    key = json.dumps([_stamp(path), _stamp(tokenizer.tokenizer_json), tokenizer.chat_template, chat_template,
                      system_prompt, max_seq_length, packing, train_on, CACHE_VERSION])
    cached = cache_dir / "token_stats" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return RowStats(**json.loads(cached.read_text(encoding="utf-8")))
    stats = _compute_row_stats(str(path), tokenizer, chat_template, system_prompt, max_seq_length, packing, train_on)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(asdict(stats)), encoding="utf-8")
        os.replace(staging, cached)
    return stats
