"""Where training rows come from, and load_conversations() of them: a JSONL file (read here, errors by line number) or anything Hugging Face
`datasets` reads — a Parquet, Arrow, JSON or CSV file or a directory of them, a dataset saved with
`save_to_disk`, or a Hub dataset id when online. Every source yields plain dict rows, each with a label
("file:line" or "source row N") that errors name, after the config's column mapping is applied.
"""
from __future__ import annotations

import os
from pathlib import Path

from runspec.config import HUB_DATASET_ID
from runspec.data_formats import CONVERTERS, FormatName, file_format, read_jsonl
from runspec.errors import DataError

Row = tuple[str, dict]  # (where, row)
DATASETS_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".csv": "csv"}
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
ACCEPTED_SOURCES = (
    "a .jsonl file, a .parquet/.arrow/.json/.csv file or a directory of them, a dataset saved with "
    "save_to_disk, or a Hub dataset id (online)"
)


def read_rows(location: str | Path, split: str = "train", columns: dict[str, str] | None = None,
              field: str = "data.train") -> list[Row]:
    """Every row of the source, renamed by `columns` ({name spottune reads: column in the source})."""
    path = Path(location)
    if path.suffix == ".jsonl":
        rows = [(f"{path}:{number}", row) for number, row in read_jsonl(path)]
        names = sorted({key for _, row in rows for key in row})
    else:
        dataset = _load_dataset(str(location), split, field)
        names = list(dataset.column_names)
        rows = [(f"{location} row {index + 1}", row) for index, row in enumerate(dataset.to_list())]
        if not rows:
            raise DataError(f"{location}: the data set is empty (no rows)")
    return _mapped(rows, names, columns or {}, str(location))


def _mapped(rows: list[Row], names: list[str], columns: dict[str, str], location: str) -> list[Row]:
    for target, source in columns.items():
        if source not in names:
            raise DataError(
                f"data.columns.{target}: column {source!r} is not in {location}; its columns: {', '.join(names)}"
            )
    if not columns:
        return rows
    return [(where, {**row, **{target: row.get(source) for target, source in columns.items()}})
            for where, row in rows]


def _load_dataset(location: str, split: str, field: str):
    import datasets

    datasets.disable_progress_bars()
    path = Path(location)
    try:
        if path.is_dir() and any((path / marker).is_file() for marker in SAVED_DATASET_MARKERS):
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file() or path.is_dir():
            builder, files = _data_files(path, field)
            loaded = datasets.load_dataset(builder, data_files=files, split="train")
        elif HUB_DATASET_ID.match(location):
            if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
                raise DataError(f"{field}: {location!r} looks like a Hub dataset id but the Hub is offline here "
                                "(HF_HUB_OFFLINE=1); download it on a machine that is online and save_to_disk")
            loaded = datasets.load_dataset(location, split=split)
        else:
            raise DataError(f"{field}: {location} not found; accepted: {ACCEPTED_SOURCES}")
    except DataError:
        raise
    except Exception as error:  # datasets raises many kinds for unreadable files and missing Hub sets
        raise DataError(f"{field}: cannot read {location}: {str(error).splitlines()[0]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{field}: {location} has no split {split!r}; its splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded


def _data_files(path: Path, field: str) -> tuple[str, list[str]]:
    """The datasets builder and the files of a data file or of a directory of same-format files."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    kinds = {DATASETS_BUILDERS[p.suffix] for p in files if p.suffix in DATASETS_BUILDERS}
    if len(kinds) != 1:
        found = ", ".join(sorted(kinds)) or "none"
        raise DataError(f"{field}: {path} must hold files of one format (.parquet, .arrow, .json or .csv), "
                        f"found: {found}; accepted: {ACCEPTED_SOURCES}")
    (kind,) = kinds
    return kind, [str(p) for p in files if DATASETS_BUILDERS.get(p.suffix) == kind]


def load_conversations(
    path: str | Path, format: str = "auto", system_prompt: str | None = None, split: str = "train",
    columns: dict[str, str] | None = None,
) -> tuple[list, FormatName]:
    """All rows of a data source (see data/sources.py) as conversations (or TRL prompt/completion records),
    with the detected (or given) format."""
    from train_core.data.trl_formats import from_prompt_completion, from_text

    rows = read_rows(path, split, columns)
    format = file_format(rows, format)
    converter = {**CONVERTERS, "prompt_completion": from_prompt_completion, "text": from_text}.get(format)
    if converter is None:
        raise DataError(f"{path}: unknown data format {format!r}; accepted: auto, {', '.join(FormatName.__args__)}")
    conversations = []
    for where, row in rows:
        conversation = converter(row, where)
        if system_prompt and isinstance(conversation, list) and conversation[0]["role"] != "system":
            conversation = [{"role": "system", "content": system_prompt}, *conversation]
        elif system_prompt and getattr(conversation, "conversational", False) and (
                not conversation.prompt or conversation.prompt[0]["role"] != "system"):
            conversation.prompt = [{"role": "system", "content": system_prompt}, *conversation.prompt]
        conversations.append(conversation)
    return conversations, format  # type: ignore[return-value]
