"""One trial on 1 and on N GPUs of one host through the real node path, and a killed 2-GPU attempt resumed.

Every run is an attempt as a pod or an EC2 instance runs it: an AttemptPayload is written to the attempt's channel
on file:// storage and `spottune node run --payload` starts (provider local, one node) with Ray in its own process,
a Ray Train TorchTrainer of `gpus_per_node` workers, and train_core's Trainer all-reducing the flat gradient over
NCCL (gloo on CPU). What is measured comes back through the channel's records, as the controller reads it:

1. throughput: 1 GPU (micro-batch x 4 accumulation) and N GPUs (micro-batch x 4/N each) at the same global batch:
   median step_seconds after the warm-up steps, tokens/s, peak reserved memory, per-step losses;
2. scaling: the N-GPU / 1-GPU tokens/s (issue 13 asks >= 1.85 for 2) and the losses' largest relative difference;
3. resume: an uninterrupted N-GPU run of R steps (checkpoints every R/2), run twice for the noise floor, and one
   whose node is SIGKILLed (with Ray's daemons) once the checkpoint of step R/2 is committed, then resumed by
   attempt 2: final adapters compared.

The model is random weights from its config (bench/calibrate_estimator.build_model_dir) with a word-level tokenizer
of --words words, trained on lines of random words that fill every packed row. One JSON line per result goes to
--out/results.jsonl, node logs to --out/logs/. On the GPU machine (see bench/ray_site.sh for the site packages):

    python3 bench/ray_two_gpu.py --out $OUT
    python3 bench/ray_two_gpu.py --device cpu --arch tiny-llama --seq-len 64 --out /tmp/ray2   # dry run
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.calibrate_estimator import build_model_dir, versions  # noqa: E402
from cluster.node.agent import NODE_DIR_ENV  # noqa: E402
from cluster.node.channel import AttemptChannel, attempt_prefix  # noqa: E402
from cluster.node.payload import AttemptPayload  # noqa: E402
from cluster.processes import processes_with_environment  # noqa: E402
from cluster.storage import open_store, parse_uri  # noqa: E402
from cost_models.architectures import resolve_architecture  # noqa: E402
from runspec.config import TrainConfig  # noqa: E402

NODE_ENV = {  # NVLink multicast off (required on the 2x H200 machine); everything on loopback and offline
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
    "GLOO_SOCKET_IFNAME": "lo", "SPOTTUNE_NODE_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1",
}
RUN_ID = "bench"
POLL_S = 0.1
SPECIAL_TOKENS = ("<unk>", "<|endoftext|>", "<|im_end|>")


def write_model(arch_name: str, target: Path, device: str, words: int) -> int:
    """The architecture with random weights and a word-level tokenizer of w0..w{n-1}; returns n (below the vocab)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    arch = resolve_architecture(arch_name)
    build_model_dir(arch, target, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    words = min(words, arch.vocab - len(SPECIAL_TOKENS))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{index}": len(SPECIAL_TOKENS) + index for index in range(words)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(
        target)
    return words


def write_data(path: Path, words: int, lines: int, seq_len: int, seed: int) -> None:
    """{"text"} lines of random words, each longer than seq_len tokens, so every packed row is one full sample."""
    generator = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            text = " ".join(f"w{generator.randrange(words)}" for _ in range(seq_len + 8))
            handle.write(json.dumps({"text": text}) + "\n")


class Attempts:
    """Launches attempts of trials through `spottune node run`, each in its node directory, and reads their records."""

    def __init__(self, args: argparse.Namespace, work: Path, model_dir: Path, data: Path, out: Path) -> None:
        self.args = args
        self.work = work
        self.model_dir = model_dir
        self.data = data
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.storage = parse_uri(f"file://{work / 'store'}")
        self.deadline = time.monotonic() + args.deadline

    def config(self, trial: str, steps: int, every: int) -> TrainConfig:
        args = self.args
        return TrainConfig.model_validate({
            "model": {"name": str(self.model_dir), "quantization": args.quantization},
            "data": {"train": str(self.data), "format": "text", "max_seq_length": args.seq_len},
            "lora": {"r": args.rank, "alpha": 2 * args.rank, "target_modules": "all-linear"},
            "training": {"max_steps": steps, "batch_size": args.batch, "micro_batch_size": args.micro_batch,
                         "learning_rate": 1e-4, "seed": 1, "activation_checkpointing": args.checkpointing,
                         "cuda_graphs": args.cuda_graphs},
            "checkpoint": {"every_steps": every},
            "output_dir": str(self.storage.child(RUN_ID, trial)),
        })

    def adapter(self, trial: str) -> Path:
        return Path(self.storage.child(RUN_ID, trial, "adapter", "adapter_model.safetensors").path)

    def run(self, trial: str, attempt: int, workers: int, steps: int, every: int,
            kill_at: int | None = None) -> list[dict]:
        """The attempt's records; with `kill_at`, the node is SIGKILLed once the checkpoint of that step is committed."""
        prefix = attempt_prefix(self.storage, RUN_ID, trial, attempt)
        payload = AttemptPayload(RUN_ID, trial, attempt, "local", self.config(trial, steps, every), str(prefix), None,
                                 nodes=1, gpus_per_node=workers, use_gpu=self.args.device == "cuda")
        channel = AttemptChannel(open_store(str(prefix)))
        channel.write_payload(payload.to_dict())
        node_dir = self.work / "nodes" / payload.name
        log = self.logs / f"{payload.name}.log"
        env = {**os.environ, **NODE_ENV, NODE_DIR_ENV: str(node_dir)}
        with open(log, "wb") as handle:
            node = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "node", "run", "--payload",
                                     str(prefix.child("payload.json"))], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        records: list[dict] = []
        started = time.monotonic()
        try:
            while node.poll() is None:
                if time.monotonic() > self.deadline:
                    raise RuntimeError(f"{payload.name}: still running at the --deadline; see {log}")
                records += channel.new_records()
                if kill_at is not None and any(r["kind"] == "checkpoint" and r["step"] >= kill_at for r in records):
                    return records
                time.sleep(POLL_S)
        finally:
            stop_node(node, node_dir)
            print(f"  {payload.name}: {time.monotonic() - started:.0f} s, exit {node.returncode}", flush=True)
        records += channel.new_records()
        with open(log, "a", encoding="utf-8") as handle:  # rank 0's log lines (device path, pinning) beside the node's
            handle.writelines(f"record: {record['line']}\n" for record in records if record["kind"] == "log")
        if node.returncode != 0 or not any(record["kind"] == "finished" for record in records):
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{payload.name}: exit {node.returncode}, outcome {channel.read_outcome()}; "
                               f"log tail: {' | '.join(tail)}")
        return records


def stop_node(node: subprocess.Popen, node_dir: Path, patience_s: float = 60.0) -> None:
    """SIGKILL the node's session and every process that inherited its directory (Ray's daemons run in sessions of
    their own), and wait until none is left, so the next attempt has the GPUs to itself."""
    if node.poll() is None:
        os.killpg(node.pid, signal.SIGKILL)
    node.wait()
    give_up = time.monotonic() + patience_s
    while left := processes_with_environment(NODE_DIR_ENV, str(node_dir)):
        if time.monotonic() > give_up:
            raise RuntimeError(f"{len(left)} processes of {node_dir} outlived SIGKILL for {patience_s:g} s")
        for process in left:
            process.kill()
        time.sleep(0.5)


def metrics(records: list[dict]) -> list[dict]:
    return [record for record in records if record["kind"] == "metrics"]


def device_path(records: list[dict]) -> str | None:
    """What the Trainer said it runs on ("device path: ..."), from rank 0's log records."""
    lines = [record["line"] for record in records if record["kind"] == "log" and record["line"].startswith("device")]
    return lines[0].partition(": ")[2] if lines else None


def max_relative(ours: list[float], theirs: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(ours, theirs, strict=True))


def throughput(attempts: Attempts, workers: int, base: dict) -> dict:
    args = attempts.args
    steps = args.warmup + args.steps
    records = attempts.run(f"gpus{workers}", 1, workers, steps, steps)
    timed = [record["step_seconds"] for record in metrics(records)[args.warmup:]]
    step_s = statistics.median(timed)
    return {**base, "kind": "throughput", "gpus": workers, "grad_accum": args.batch // args.micro_batch // workers,
            "device_path": device_path(records), "step_s": step_s, "step_s_all": timed,
            "tokens_per_s": args.batch * args.seq_len / step_s,
            "peak_memory_gib": max(record["peak_memory_gib"] or 0.0 for record in metrics(records)),
            "losses": [record["loss"] for record in metrics(records)]}


def adapter_differences(ours: dict, theirs: dict) -> tuple[float, float]:
    """(largest absolute difference, largest per-tensor relative difference in norm) between two adapters."""
    absolute = max(float((ours[name].float() - theirs[name].float()).abs().max()) for name in theirs)
    relative = max(float((ours[name].float() - theirs[name].float()).norm() / theirs[name].float().norm().clamp_min(1e-30))
                   for name in theirs)
    return absolute, relative


def resume(attempts: Attempts, workers: int, base: dict) -> dict:
    """The same R steps uninterrupted (twice: on a GPU the attention backward's atomics round differently from run
    to run, which sets the noise floor) and killed after the checkpoint of step R/2, then resumed by attempt 2."""
    from safetensors.torch import load_file

    steps, half = attempts.args.resume_steps, attempts.args.resume_steps // 2
    whole = metrics(attempts.run("whole", 1, workers, steps, half))
    again = metrics(attempts.run("again", 1, workers, steps, half))
    killed = attempts.run("resumed", 1, workers, steps, half, kill_at=half)
    killed_at = max(record["step"] for record in killed if record["kind"] == "checkpoint")
    second = attempts.run("resumed", 2, workers, steps, half)
    finished = next(record for record in second if record["kind"] == "finished")
    after = {record["step"]: record["loss"] for record in metrics(second)}
    before = {record["step"]: record["loss"] for record in whole if record["step"] in after}
    repeat = {record["step"]: record["loss"] for record in again if record["step"] in after}
    theirs = load_file(attempts.adapter("whole"))
    ours, repeated = load_file(attempts.adapter("resumed")), load_file(attempts.adapter("again"))
    absolute, relative = adapter_differences(ours, theirs)
    noise_absolute, noise_relative = adapter_differences(repeated, theirs)
    order = sorted(after)
    return {**base, "kind": "resume", "gpus": workers, "steps": steps, "killed_after_checkpoint": killed_at,
            "resumed_from": finished["resumed_from"], "adapter_max_abs_diff": absolute,
            "adapter_max_rel_diff": relative, "adapter_bit_identical": ours.keys() == theirs.keys()
            and all(ours[name].equal(theirs[name]) for name in theirs),
            "noise_adapter_max_abs_diff": noise_absolute, "noise_adapter_max_rel_diff": noise_relative,
            "losses_resumed": [after[step] for step in order],
            "losses_uninterrupted": [before[step] for step in order],
            "loss_max_rel_diff": max_relative([after[s] for s in order], [before[s] for s in order]),
            "noise_loss_max_rel_diff": max_relative([repeat[s] for s in order], [before[s] for s in order])}


def write_result(out: Path, record: dict) -> None:
    with open(out / "results.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2.5-3b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--gpus", type=int, default=2, help="workers of the multi-GPU runs")
    parser.add_argument("--quantization", default=None, help="default: nf4 on cuda, fp32 on cpu")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (all-linear)")
    parser.add_argument("--checkpointing", default="full")
    parser.add_argument("--cuda-graphs", action="store_true", help="training.cuda_graphs (measured with --checkpointing none)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8, help="sequences per optimizer step, over all workers")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--words", type=int, default=30000, help="tokenizer words (capped below the model's vocab)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resume-steps", type=int, default=6, help="R: steps of the resume runs, killed at R/2 "
                        "(0: no resume runs)")
    parser.add_argument("--resume-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--deadline", type=float, default=500.0, help="seconds for all attempts together")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    args.quantization = args.quantization or ("nf4" if args.device == "cuda" else "fp32")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="spottune-bench-gpus-"))
    try:
        started = time.monotonic()
        model_dir, data = work / "model", work / "train.jsonl"
        words = write_model(args.arch, model_dir, args.device, args.words)
        write_data(data, words, args.batch * max(args.warmup + args.steps, args.resume_steps), args.seq_len, seed=2)
        print(f"model and data written in {time.monotonic() - started:.0f} s", flush=True)
        if args.device == "cuda":
            from bench.common import environment

            context = environment()
        else:
            context = {"gpu": "cpu", "date": time.strftime("%Y-%m-%d")}
        base = {**context, "versions": versions(), "arch": args.arch, "quantization": args.quantization,
                "lora_rank": args.rank, "checkpointing": args.checkpointing, "cuda_graphs": args.cuda_graphs,
                "seq_len": args.seq_len,
                "batch": args.batch, "micro_batch": args.micro_batch, "words": words, "path": "ray-train node"}
        attempts = Attempts(args, work, model_dir, data, out)
        results: list[dict] = []
        parts = [] if args.resume_only else [("1 GPU", lambda: throughput(attempts, 1, base)),
                                             (f"{args.gpus} GPUs", lambda: throughput(attempts, args.gpus, base))]
        if args.resume_steps:
            parts.append(("resume", lambda: resume(attempts, args.gpus, base)))
        for part, measure in parts:
            part_started = time.monotonic()
            try:
                result = measure()
            except Exception as error:  # one part failing still leaves the others' numbers
                result = {**base, "kind": "error", "part": part, "error": f"{type(error).__name__}: {error}"}
            results.append(result)
            write_result(out, result)
            print(f"{part}: {time.monotonic() - part_started:.0f} s", flush=True)
        report(out, results, args)
        return 0 if all(result["kind"] != "error" for result in results) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(out: Path, results: list[dict], args: argparse.Namespace) -> None:
    """Append the scaling line (when both throughput runs ran) and print a short table."""
    runs = {result["gpus"]: result for result in results if result["kind"] == "throughput"}
    if 1 in runs and args.gpus in runs:
        one, many = runs[1], runs[args.gpus]
        scaling = {"kind": "scaling", "gpus": args.gpus, "ratio": many["tokens_per_s"] / one["tokens_per_s"],
                   "target": 1.85, "loss_max_rel_diff": max_relative(many["losses"], one["losses"]),
                   "device_path": many["device_path"], "gpu": one["gpu"], "date": one["date"]}
        results.append(scaling)
        write_result(out, scaling)
    print(f"{'run':<10} {'step_s':>8} {'tokens/s':>10} {'peak GiB':>9}  losses")
    for result in results:
        if result["kind"] == "throughput":
            losses = " ".join(f"{loss:.4f}" for loss in result["losses"])
            print(f"{result['gpus']} GPU(s)  {result['step_s']:8.3f} {result['tokens_per_s']:10.0f} "
                  f"{result['peak_memory_gib']:9.2f}  {losses}")
        elif result["kind"] == "scaling":
            print(f"scaling {result['ratio']:.3f}x (target {result['target']}), losses max rel diff "
                  f"{result['loss_max_rel_diff']:.2e}; {result['device_path']}")
        elif result["kind"] == "resume":
            print(f"resume: killed after checkpoint {result['killed_after_checkpoint']}, resumed from "
                  f"{result['resumed_from']}; adapter bit-identical {result['adapter_bit_identical']} (max abs diff "
                  f"{result['adapter_max_abs_diff']:.2e}, largest tensor's relative diff "
                  f"{result['adapter_max_rel_diff']:.2e}); losses after resume max rel diff "
                  f"{result['loss_max_rel_diff']:.2e}; two uninterrupted runs: adapter max abs diff "
                  f"{result['noise_adapter_max_abs_diff']:.2e}, largest relative {result['noise_adapter_max_rel_diff']:.2e}, "
                  f"losses {result['noise_loss_max_rel_diff']:.2e}")
        elif result["kind"] == "error":
            print(f"{result['part']} FAILED: {result['error']}")


if __name__ == "__main__":
    sys.exit(main())
