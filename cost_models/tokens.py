"""Token statistics of a training data set: real rows are far shorter than max_seq_length, packing changes
the count. Reads rows with runspec's data formats, renders each conversation with the model's chat template
(jinja2), tokenizes with the model's tokenizer.json (`tokenizers`, no torch) when one is on disk, and applies
runspec.packing's rules (loss mask, truncation, dropped samples, epoch order, first-fit packing) as the trainer does.
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
from runspec.chat_templates import CHATML, NAMED_TEMPLATES
from runspec.data_formats import CONVERTERS, Conversation, file_format, read_jsonl, to_conversation
from runspec.errors import DataError
from runspec.packing import Render, assistant_spans, epoch_rows, trainable_mask, truncate

SAMPLE_ROWS = 4000  # rows read from large files; counts are scaled to the whole file
CHARS_PER_TOKEN = 3.8  # EST for English text when no tokenizer is available
CACHE_VERSION = 2  # bump when the counting changes


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


def _trl_messages(row: dict, row_format: str, system_prompt: str | None) -> Conversation:
    """TRL's prompt/completion and text rows counted as chat turns (train_core renders plain-string ones without
    the chat template, so for those this is an estimate)."""
    if row_format == "text":
        messages = [{"role": "assistant", "content": str(row.get("text", ""))}]
    elif isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content", ""))}
                    for m in row["prompt"] + row["completion"] if isinstance(m, dict)]
    else:
        messages = [{"role": "user", "content": str(row.get("prompt"))},
                    {"role": "assistant", "content": str(row.get("completion"))}]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _read_rows(path: Path, data_format: str, system_prompt: str | None) -> tuple[list[Conversation], int]:
    """A sample of conversations (all of a small file) and the number of rows in the file."""
    if not path.is_file():
        raise EstimateError(f"data.train: {path} not found")
    try:
        rows = [(f"{path}:{number}", row) for number, row in read_jsonl(path)]
        row_format = file_format(rows, data_format)
        picked = rows if len(rows) <= SAMPLE_ROWS else random.Random(0).sample(rows, SAMPLE_ROWS)
        conversations = [
            to_conversation(row, row_format, where, system_prompt) if row_format in CONVERTERS
            else _trl_messages(row, row_format, system_prompt) for where, row in picked
        ]
    except DataError as error:
        raise EstimateError(str(error)) from None
    return conversations, len(rows)


def _renderer(template: str, special: tuple[tuple[str, str], ...]) -> Render:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    compiled = environment.from_string(template)
    return lambda messages, prompt: compiled.render(messages=messages, add_generation_prompt=prompt, **dict(special))


def _estimated_offsets(text: str) -> list[tuple[int, int]]:
    """Character offsets of pseudo-tokens of CHARS_PER_TOKEN characters (no tokenizer on disk)."""
    count = max(1, round(len(text) / CHARS_PER_TOKEN))
    return [(round(i * CHARS_PER_TOKEN), min(len(text), round((i + 1) * CHARS_PER_TOKEN))) for i in range(count)]


def _offsets(texts: list[str], tokenizer: TokenizerFiles) -> tuple[list[list[tuple[int, int]]], str]:
    """Token character offsets per text, and how they were counted."""
    if tokenizer.tokenizer_json is None:
        method = f"estimated at {CHARS_PER_TOKEN} characters per token (no tokenizer on disk)"
        return [_estimated_offsets(text) for text in texts], method
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_file(str(tokenizer.tokenizer_json))
    encodings = encoder.encode_batch(texts, add_special_tokens=False)
    return [list(encoding.offsets) for encoding in encodings], f"tokenized with {tokenizer.tokenizer_json.parent.name}"


def _compute_row_stats(
    path: str, tokenizer: TokenizerFiles, chat_template: str, system_prompt: str | None, max_seq_length: int,
    packing: bool, train_on: str, data_format: str, seed: int,
) -> RowStats:
    conversations, total_rows = _read_rows(Path(path), data_format, system_prompt)
    if chat_template == "auto":
        template = tokenizer.chat_template or CHATML
    else:
        template = NAMED_TEMPLATES.get(chat_template, chat_template)
    render = _renderer(template, tokenizer.special)
    try:
        rendered = [assistant_spans(render, messages) for messages in conversations]
    except Exception as error:  # jinja2 raises many kinds for a broken template
        raise EstimateError(f"data.chat_template: cannot render {path} with it ({error})") from None
    offsets, method = _offsets([text for text, _ in rendered], tokenizer)
    kept, targets = [], []
    for token_offsets, (_, spans) in zip(offsets, rendered):
        trainable = truncate(trainable_mask(token_offsets, spans, train_on), max_seq_length)
        if trainable is not None:
            kept.append(len(trainable))
            targets.append(sum(trainable))
    if not kept:
        raise EstimateError(f"{path}: no sample has a target token within max_seq_length={max_seq_length}")
    rows = epoch_rows(kept, seed, 0, max_seq_length, packing)
    row_tokens = [sum(kept[index] for index in row) for row in rows]
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
    data_format: str = "auto",
    seed: int = 0,
) -> RowStats:
    """Rows per epoch and tokens per row of a JSONL data set as the trainer will see them.

    Kept per process and, with cache_dir, on disk keyed by the files' sizes and times and the settings."""
    path = Path(path)
    if not path.is_file():
        raise EstimateError(f"data.train: {path} not found")
    tokenizer = tokenizer_files(model_dir)
    key = json.dumps([_stamp(path), _stamp(tokenizer.tokenizer_json), tokenizer.chat_template, chat_template,
                      system_prompt, max_seq_length, packing, train_on, data_format, seed, CACHE_VERSION])
    cached = cache_dir / "token_stats" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        return RowStats(**json.loads(cached.read_text(encoding="utf-8")))
    stats = _compute_row_stats(str(path), tokenizer, chat_template, system_prompt, max_seq_length, packing, train_on,
                               data_format, seed)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(asdict(stats)), encoding="utf-8")
        os.replace(staging, cached)
    return stats
