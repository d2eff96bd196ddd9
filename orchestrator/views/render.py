"""Plain-text tables and CSV/JSON output for the planning commands (standard library only)."""
from __future__ import annotations

import csv
import io
import json
from typing import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "") -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return (indent + "  ".join(parts)).rstrip()

    return "\n".join([line(list(headers))] + [line(row) for row in cells])


def _is_number(text: str) -> bool:
    stripped = text.replace(",", "").replace("$", "").replace("%", "").lstrip("+-")
    try:
        float(stripped)
    except ValueError:
        return text in ("-", "")
    return True


def to_csv(records: list[dict]) -> str:
    if not records:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def to_json(payload: object) -> str:
    """Compact JSON (the C encoder: thousands of plan rows stay fast)."""
    return json.dumps(payload, default=str)


def money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.2f}" if value >= 0.995 else f"${value:.3f}"


def hours(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"
