"""How fast `spottune plan` answers: 50 trials x every catalog offer (all providers, both markets, plus local).

Runs the real CLI in fresh interpreters (imports included), first with an empty token-statistics cache,
then warm, and prints wall and CPU seconds with the machine's load. Not a test: timings depend on the box.

    python bench/plan_speed.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROVIDERS = ["local", "aws", "aws-capacity-block", "gcp", "azure", "runpod", "lambda", "vast"]


def write_spec(directory: Path) -> Path:
    """50 trials: 5 models x 5 LoRA ranks x 2 learning rates over the example data set."""
    spec = {
        "name": "speed50",
        "base": str(REPO / "examples" / "quickstart.yaml"),
        "config": {"data": {"train": str(REPO / "examples" / "data" / "copywriting_train.jsonl"), "eval": None}},
        "search": {"method": "grid", "parameters": {
            "model.name": ["builtin:smollm2-135m-instruct", "qwen2.5-1.5b", "llama-3-8b", "qwen2.5-7b", "qwen2.5-14b"],
            "lora.r": [8, 16, 32, 64, 128],
            "training.learning_rate": [1.0e-4, 2.0e-4],
        }},
        "resources": {"providers": PROVIDERS, "market": "any"},
    }
    path = directory / "speed50.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def timed_run(spec: Path, cache: Path) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the child, parsed JSON) of one `spottune plan SPEC --json`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPOTTUNE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "plan", str(spec), "--json"],
                            capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in (0, 1):
        raise SystemExit(f"plan failed: {result.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs after the cold one")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        spec = write_spec(work)
        cache = work / "cache"
        source = Path(os.environ.get("SPOTTUNE_CACHE", REPO / ".cache" / "spottune")) / "gguf"
        if source.is_dir():  # reuse the converted SmolLM2 tokenizer, not its token statistics
            (cache / "gguf").mkdir(parents=True)
            for model in source.iterdir():
                (cache / "gguf" / model.name).symlink_to(model)
        load = os.getloadavg()[0]
        cold = timed_run(spec, cache)
        warm = [timed_run(spec, cache) for _ in range(args.runs)]
    payload = cold[2]
    print(f"{len(payload['trials'])} trials x {payload['offers']} offers = {len(payload['rows'])} rows; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at start; Python {sys.version.split()[0]}")
    print(f"cold (token statistics computed): wall {cold[0]:.2f} s, CPU {cold[1]:.2f} s")
    walls, cpus = [w for w, _, _ in warm], [c for _, c, _ in warm]
    print(f"warm x{len(warm)}: wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}), "
          f"CPU median {statistics.median(cpus):.2f} s (min {min(cpus):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
