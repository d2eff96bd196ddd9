"""Turn unreadable YAML and pydantic ValidationErrors into one readable line."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError


def read_yaml(path: Path, error: type[Exception]) -> object:
    """Parse a YAML file, or raise `error` with one line naming the file, the line and the problem."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}:{where} not valid YAML ({getattr(problem, 'problem', problem)})") from None


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
        problem = f"unknown field; accepted fields here: {', '.join(allowed)}"
    elif first["type"] == "missing":
        problem = "required field is missing"
    else:
        problem = first["msg"]
        if "input" in first and not isinstance(first["input"], (dict, list)):
            problem += f" (got {first['input']!r})"
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: field '{path}': {problem}{suffix}"
