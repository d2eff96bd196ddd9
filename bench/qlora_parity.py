"""Loss parity of the fast engine with the standard HF QLoRA recipe, and PEFT loading of its adapter.

Both start from the same random checkpoint and the same initial adapters (PEFT's, copied into the fast
engine), see the same batches (token ids drawn from a Zipf law, so there is something to learn) and
step 8-bit AdamW at lr 2e-4. Prints the largest relative difference of the per-step losses, then saves
the fast engine's adapter, loads it with PEFT onto the recipe's model and compares one batch's loss.

    python bench/qlora_parity.py --model qwen2-1.5b --steps 50 --out $OUT
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    AdapterOptimizer, adamw_8bit, build_model, environment, fast_step, hf_step, load_hf_recipe, release, shifted_labels, write_result,
)


def zipf_batch(step: int, micro: int, rows: int, seq: int, support: int = 4096) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7919 * step + micro)
    weights = 1.0 / (torch.arange(support, dtype=torch.float64) + 10.0)
    return torch.multinomial(weights, rows * seq, replacement=True, generator=generator).view(rows, seq) + 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2-1.5b")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--mode", default="full")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "spottune-bench-models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from peft import get_peft_model_state_dict

    from train_core.fast.engine import FastEngine
    from train_core.fast.loading import AdapterSpec

    path = build_model(args.model, args.root)
    batches = [[zipf_batch(s, m, args.micro, args.seq) for m in range(args.accum)] for s in range(args.steps)]

    release()
    hf = load_hf_recipe(path, seed=0)
    initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(hf).items()}
    optimizer = adamw_8bit([p for p in hf.parameters() if p.requires_grad])
    hf_losses = [hf_step(hf, optimizer, step) for step in batches]
    del optimizer

    fast = FastEngine(path, AdapterSpec.from_target_modules(16, 16, "all-linear", seed=0), torch.device("cuda"), args.mode)
    fast.load_adapter_state(initial)
    optimizer = AdapterOptimizer(fast.trainable_parameters())
    fast_losses = [fast_step(fast, optimizer, step) for step in batches]

    relative = [abs(f - h) / abs(h) for f, h in zip(fast_losses, hf_losses)]
    adapter_dir = Path(tempfile.mkdtemp()) / "fast_adapter"
    fast.save_adapter(adapter_dir)
    hf.load_adapter(str(adapter_dir), adapter_name="fast")
    hf.set_adapter("fast")
    probe = zipf_batch(10_000, 0, args.micro, args.seq)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        peft_loss = float(hf(input_ids=probe.cuda(), labels=probe.cuda()).loss)
        labels = shifted_labels(probe)
        fast_loss = float(fast.loss_sum(probe, torch.arange(args.seq).expand_as(probe), labels)) / int((labels != -100).sum())
    write_result(args.out, {
        "run": f"parity {args.model} {args.micro}x{args.accum} seq {args.seq} {args.mode}", "steps": args.steps,
        "max_rel_loss_diff": round(max(relative), 5), "mean_rel_loss_diff": round(sum(relative) / len(relative), 5),
        "hf_losses": [round(l, 4) for l in hf_losses], "fast_losses": [round(l, 4) for l in fast_losses],
        "peft_loaded_adapter_loss": round(peft_loss, 5), "fast_engine_loss": round(fast_loss, 5),
        "adapter_rel_diff": round(abs(peft_loss - fast_loss) / abs(fast_loss), 5), **environment(),
    })


if __name__ == "__main__":
    main()
