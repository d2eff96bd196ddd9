"""Print benchmark results (results.jsonl) as a short table, the baselines' ratios included."""
from __future__ import annotations

import json
import sys

BASELINES = ("hf", "unsloth")  # engines whose runs every other run of the same model is compared with


def main(path: str) -> None:
    try:
        lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    except FileNotFoundError:
        print("no results")
        return
    records = [r for r in lines if "run" in r]  # bench/ray_two_gpu.py's records (keyed by "kind") print their own table
    baselines = {r["run"].split(" seq ")[0]: r for r in records
                 if r["run"].split(" ")[1].split(":")[0] in BASELINES and "tokens_per_s" in r}
    for r in records:
        if "error" in r:
            print(f"{r['run']:<48} ERROR {r['error'][:120]}")
            continue
        if "max_rel_loss_diff" in r:
            print(f"{r['run']:<48} max rel loss diff {r['max_rel_loss_diff']} (mean {r['mean_rel_loss_diff']}), "
                  f"PEFT-loaded adapter rel diff {r['adapter_rel_diff']}")
            continue
        if "full_depth_peak_estimate_gib" in r:
            print(f"{r['run']:<48} {r['s_per_step']:>7}s peak {r['peak_alloc_gib']} GiB, {r.get('inputs_kept_on_gpu', 0)} inputs "
                  f"on GPU, {r.get('host_pinned_gib', '?')} GiB pinned (full depth ~{r['full_depth_peak_estimate_gib']} GiB, "
                  f"{r.get('full_depth_host_pinned_gib', '?')} GiB pinned)")
            continue
        model = r["run"].split(" ")[0]
        ratios = " ".join(
            f"x{r['tokens_per_s'] / b['tokens_per_s']:.2f} vs {key[len(model):]}"
            for key, b in baselines.items() if key.startswith(model) and b is not r
        )
        startup = f" startup {r['startup_s']}s" if "startup_s" in r else ""
        busy = f" GPU busy {r['gpu_busy_pct']}%" if "gpu_busy_pct" in r else ""
        print(f"{r['run']:<48} {r['tokens_per_s']:>7} tok/s {r['s_per_step']:>7}s/step ±{r.get('step_spread_pct', '?')}% "
              f"alloc {r['peak_alloc_gib']:>6} res {r['peak_reserved_gib']:>6} GiB{' exp' if r.get('expandable_segments') else ''} "
              f"{ratios}{startup}{busy}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results.jsonl")
