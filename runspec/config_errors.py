"""Turn unreadable YAML and pydantic ValidationErrors into one readable line."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32


class _Refused(yaml.YAMLError):
    """A YAML construct the reader does not accept, at a line."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line, self.what = line, what


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, duplicate keys and deep nesting (no alias bombs, no silent overrides)."""

    depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(mark.line + 1, "YAML aliases (*name) are not accepted; write the value out")
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused(mark.line + 1, f"nested deeper than {MAX_YAML_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise _Refused(key_node.start_mark.line + 1, f"duplicate key {key!r}; each key may appear once")
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path, error: type[Exception]) -> object:
    """Parse a YAML file, or raise `error` with one line naming the file, the line and the problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror or problem})") from None
    if len(data) > MAX_YAML_BYTES:
        raise error(f"{path}: larger than {MAX_YAML_BYTES >> 20} MiB; a config or sweep spec is a small text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as problem:
        line = data[: problem.start].count(b"\n") + 1
        byte = data[problem.start]
        raise error(f"{path}: line {line}: not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_GuardedLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as problem:
        raise error(f"{path}: line {problem.line}: {problem.what}") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        detail = " ".join(str(getattr(problem, "problem", None) or problem).split())
        raise error(f"{path}:{where} not valid YAML ({detail})") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to read (more than {MAX_YAML_DEPTH} levels)") from None


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names accepted at the parent of `loc` (for 'unknown field' messages)."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(current.model_fields) if current is not None else []


def describe_validation_error(source: str, model: type[BaseModel], error: ValidationError) -> str:
    """One line: '<source>: field <path>: <problem>' for the first error (and a count of the rest)."""
    first = error.errors()[0]
    loc = tuple(first["loc"])
    path = _field_path(loc) or "<top level>"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_fields(model, loc)
        problem = f"unknown field; accepted fields here: {', '.join(allowed) or 'none'}"
    elif first["type"] == "missing":
        problem = "required field is missing"
    else:
        problem = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)):
            problem += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: field '{path}': {problem}{suffix}"
