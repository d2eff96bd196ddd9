"""What the planner prices is what `spottune train` runs (issue 10): one train config, everything `auto`, planned
for this GPU and then trained on it; prints the plan's micro-batch, checkpointing, VRAM (point and upper bound) and
step time beside the run's.

The config is the issue's case: a 1.7B Llama-shape model (SmolLM2-1.7B's shape, random weights), seq 2048,
batch 8, NF4 + LoRA r16 on the seven projections. Run on a CUDA machine:
    python bench/plan_vs_train.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import GIB, build_model  # noqa: E402
from cost_models.catalog import list_offers  # noqa: E402
from orchestrator.sweep.planner import plan_trial, trial_job  # noqa: E402
from runspec.config import load_config  # noqa: E402
from train_core.models.sources import resolve_model  # noqa: E402
from train_core.trainer import read_metrics, train  # noqa: E402

WORDS = "price fabric bottle garden travel coffee leather window battery morning".split()


def with_tokenizer(model_dir: Path) -> None:
    """Give the random-weight model a tokenizer: the tiny builtin's BPE (its vocabulary fits the model's)."""
    tiny = Path(resolve_model("builtin:tiny-llama").path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny / name).exists():
            shutil.copy(tiny / name, model_dir / name)


def write_data(path: Path, rows: int = 64) -> None:
    generator = random.Random(0)
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            text = " ".join(generator.choice(WORDS) for _ in range(3000))
            handle.write(json.dumps({"instruction": f"Describe item {index}.", "input": "", "output": text}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/plan_vs_train"))
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    work = Path("/tmp/plan_vs_train")
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model("smollm2-1.7b", work / "models")
    with_tokenizer(model_dir)
    write_data(work / "train.jsonl")
    config_path = work / "train.yaml"
    config_path.write_text(json.dumps({
        "model": {"name": str(model_dir)},
        "data": {"train": str(work / "train.jsonl"), "max_seq_length": 2048},
        "lora": {"r": 16, "alpha": 16},
        "training": {"batch_size": 8, "max_steps": args.steps, "log_every": 1},
        "checkpoint": {"every_steps": 1000},
        "output_dir": str(work / "run"),
    }), encoding="utf-8")
    config = load_config(config_path)

    gpu = "H200" if "H200" in torch.cuda.get_device_name() else "H100"
    offer = next(o for o in list_offers(["aws", "lambda", "runpod", "vast", "gcp", "azure"], "any", [gpu]))
    planned = plan_trial(trial_job("t0", config), [offer]).rows[0].estimate

    shutil.rmtree(work / "run", ignore_errors=True)
    torch.cuda.reset_peak_memory_stats()
    result = train(config)
    metrics = [m for m in read_metrics(work / "run" / "metrics.jsonl") if "loss" in m]
    step_s = sorted(m["step_seconds"] for m in metrics[2:])[len(metrics[2:]) // 2]
    record = {
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "planned": {"micro_batch": planned.shape.micro_batch, "checkpointing": planned.shape.checkpointing,
                    "engine": planned.shape.engine, "vram_gib": round(planned.need_gib, 2),
                    "vram_upper_gib": round(planned.need_upper_gib, 2), "step_s": round(planned.time.step, 3),
                    "step_interval_s": [round(planned.step_low, 3), round(planned.step_high, 3)]},
        "trained": {"device_path": result.device_path,
                    "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                    "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
                    "median_step_s": round(step_s, 3), "steps": len(metrics)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan_vs_train.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
