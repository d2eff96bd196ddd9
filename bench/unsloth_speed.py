"""Tokens/s and peak memory of Unsloth's QLoRA path: the in-run reference beside bench/qlora_speed.py.

Unsloth patches transformers when imported, so it runs in its own process, on the checkpoint that
qlora_speed.py built under the same --root. Each run is `unsloth:MICROxACCUM` (e.g. `unsloth:2x4`): NF4 +
double quant, LoRA r16 alpha 16 on the 7 projections, Unsloth's offloaded gradient checkpointing, 8-bit
AdamW, bf16 autocast, the same random batches and timing as qlora_speed.py. Needs Unsloth's wheels
(`../shared/tools/gpu-wheels --with-unsloth`); runs offline.

    python bench/unsloth_speed.py --model qwen2-1.5b --runs unsloth:2x4 unsloth:8x1 --out $OUT
"""
from __future__ import annotations

import os

os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import unsloth  # noqa: E402,F401  (first: it patches transformers and peft as they are imported)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    TARGETS, adamw_8bit, build_model, environment, hf_step, random_batch, release, summarise, timed_steps, write_result,
)


def add_tokenizer(path: Path) -> None:
    """Unsloth loads a tokenizer with the model; the random-weight checkpoints have none, so lend the built-in
    tiny model's (the benchmark feeds token ids, so its vocabulary does not matter)."""
    from transformers import AutoTokenizer

    from train_core.models.sources import resolve_model

    if not (path / "tokenizer_config.json").exists():
        AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-llama").path).save_pretrained(path)


def run_unsloth(path: Path, micro: int, accum: int, seq: int, vocab: int, warmup: int, steps: int) -> tuple[list[float], dict]:
    from unsloth import FastLanguageModel

    torch.cuda.synchronize()
    started = time.perf_counter()
    model, _ = FastLanguageModel.from_pretrained(str(path), max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=16, lora_alpha=16, lora_dropout=0, bias="none", target_modules=TARGETS,
        use_gradient_checkpointing="unsloth", random_state=0,
    )
    FastLanguageModel.for_training(model)
    loaded = time.perf_counter() - started
    optimizer = adamw_8bit([p for p in model.parameters() if p.requires_grad])
    first_step: list[float] = []

    def step(index: int) -> float:
        begin = time.perf_counter()
        loss = hf_step(model, optimizer, [random_batch(index, m, micro, seq, vocab) for m in range(accum)])
        if index == 0:
            first_step.append(time.perf_counter() - begin)
        return loss

    seconds, losses = timed_steps(step, warmup, steps)
    return seconds, {"load_s": round(loaded, 2), "startup_s": round(loaded + first_step[0], 2),
                     "losses": [round(l, 4) for l in losses], "unsloth": unsloth.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2-1.5b")
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "spottune-bench-models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    path = build_model(args.model, args.root)
    add_tokenizer(path)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    for spec in args.runs:
        micro, accum = (int(v) for v in spec.split(":")[1].split("x"))
        release()
        label = f"{args.model} {spec} seq {args.seq}"
        try:
            seconds, extra = run_unsloth(path, micro, accum, args.seq, vocab, args.warmup, args.steps)
            write_result(args.out, {**summarise(label, seconds, micro * accum * args.seq, extra), **env})
        except Exception as error:  # keep measuring the other runs; the failure is recorded
            traceback.print_exc()
            write_result(args.out, {"run": label, "error": f"{type(error).__name__}: {str(error)[:300]}", **env})
        release()


if __name__ == "__main__":
    main()
