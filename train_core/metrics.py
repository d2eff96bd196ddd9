"""Per-step metrics: a JSONL file plus a progress bar (or plain lines when not on a terminal)."""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Callable

import torch


def peak_memory_gib(device: str) -> dict:
    """Peak process RSS, and peak allocated/reserved GPU memory on CUDA, in GiB."""
    stats = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if device == "cuda":
        stats["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        stats["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    return stats


class MetricsLog:
    """Appends one JSON object per logged step; on resume, drops records past the resumed step."""

    def __init__(self, path: Path, total_steps: int, start_step: int, echo: Callable[[str], None]) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._echo = echo
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._bar is not None:
            self._bar.n = record["step"]
            postfix = {"loss": f"{record['loss']:.4f}"} if "loss" in record else {}
            if "eval_loss" in record:
                postfix["eval"] = f"{record['eval_loss']:.4f}"
            self._bar.set_postfix(postfix, refresh=True)
        elif "loss" in record:
            self._echo(
                f"step {record['step']}/{record['total_steps']} loss {record['loss']:.4f} "
                f"lr {record['lr']:.2e} {record['tokens_per_s']:.0f} tok/s {record['step_seconds']:.2f} s"
            )
        elif "eval_loss" in record:
            self._echo(f"step {record['step']} eval loss {record['eval_loss']:.4f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
