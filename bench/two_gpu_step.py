"""One trial's optimizer step on 1 or N GPUs of one host: train_core's Trainer step with its own gradient all-reduce
(the flat gradient, train_core.distributed over NCCL), and that all-reduce timed alone over several gradient sizes
(the job's, with the gather of its per-tensor gradients into the flat buffer; synthetic ones without).

Start one process per GPU with torchrun (Ray is not needed):

    python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/two_gpu_step.py --out multi.jsonl
    python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/two_gpu_step.py --out multi.jsonl

Every worker gets the same rows per step whatever the number of GPUs (micro_batch x grad_accum), so the
difference between the two runs is what data parallelism adds: the all-reduce and any imbalance. The model is
built from its config with random weights (bench/calibrate_estimator.build_model_dir); nothing is downloaded.
Rank 0 appends one JSON line per measurement to --out. `--device cpu` runs it on gloo as a dry run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.calibrate_estimator import Bench, Group, Point, build_model_dir, synthetic_samples, versions  # noqa: E402
from cost_models.architectures import resolve_architecture  # noqa: E402
from train_core.affinity import pin_to_core_share  # noqa: E402

SYNTHETIC_GRAD_ELEMENTS = (1_000_000, 4_000_000, 16_000_000, 64_000_000, 128_000_000)


def timed(function, repeats: int, cuda: bool) -> list[float]:
    import torch

    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def allreduce_seconds(dist, elements: int, device: str, repeats: int) -> float:
    """Median seconds of Distributed.all_reduce_in_place over a flat fp32 gradient of `elements`."""
    import torch

    gradient = torch.randn(elements, device=device)
    dist.all_reduce_in_place(gradient)  # warm-up: NCCL sets up its channels on the first call
    return statistics.median(timed(lambda: dist.all_reduce_in_place(gradient), repeats, device == "cuda"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="qwen2.5-3b")
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank (all-linear)")
    parser.add_argument("--checkpointing", default="full")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--work", default="/tmp/spottune-multi-gpu")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pin", action="store_true", help="pin each rank to its own physical cores (train_core.affinity)")
    parser.add_argument("--label", default="", help="recorded with the results (e.g. which variant of a comparison)")
    args = parser.parse_args()
    pinned = pin_to_core_share(int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) \
        if args.pin else None

    cuda = args.device == "cuda"
    if cuda:  # one visible GPU per worker, as Ray Train gives each of its workers
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if visible != [""] else str(local)

    import torch
    import torch.distributed as torch_dist

    from train_core.checkpoint import TrainerState
    from train_core.data.batching import BatchPlan

    torch_dist.init_process_group("nccl" if cuda else "gloo")
    world, rank = torch_dist.get_world_size(), torch_dist.get_rank()
    arch = resolve_architecture(args.arch)
    work = Path(args.work)
    model_dir = work / arch.name
    if rank == 0 and not (model_dir / "config.json").is_file():
        build_model_dir(arch, model_dir, args.device)
    torch_dist.barrier()
    group = Group(args.arch, "nf4" if cuda else "bf16", args.rank, ())
    bench = Bench(group, arch, model_dir, work / f"rank{rank}", args.device, "auto")
    bench.set_checkpointing(args.checkpointing)
    trainer = bench.trainer
    point = Point(args.checkpointing, args.seq_len, args.micro_batch, 1, args.grad_accum)
    per_worker = args.micro_batch * args.grad_accum
    steps = args.warmup + args.steps
    samples = synthetic_samples(point, arch.vocab, per_worker * world * steps, seed=args.seq_len)
    trainer.plan = BatchPlan(samples, 0, per_worker * world, args.seq_len, packing=True)
    trainer.micro_batch = args.micro_batch
    state = TrainerState(step=0, epoch=0, cursor=0, tokens_seen=0, config_fingerprint="multi-gpu", world_size=world)
    step_times = [trainer._optimizer_step(state)["step_seconds"] for _ in range(steps)][args.warmup:]
    flat = trainer.flat

    def gather_and_reduce() -> None:
        for tensor in flat.tensors:  # what backward leaves: one gradient per adapter tensor
            tensor.grad = torch.ones_like(tensor)
        trainer.dist.all_reduce_in_place(flat.gather_grads())

    grads = timed(gather_and_reduce, args.steps, cuda)
    synthetic = {n: allreduce_seconds(trainer.dist, n, args.device, args.steps) for n in SYNTHETIC_GRAD_ELEMENTS}
    if rank == 0:
        base = {
            "date": time.strftime("%Y-%m-%d"), "card": torch.cuda.get_device_name() if cuda else "cpu",
            "versions": f"{versions()} nccl={'.'.join(map(str, torch.cuda.nccl.version())) if cuda else '-'}",
            "gpus": world, "arch": arch.name, "engine": bench.engine_name, "lora_rank": args.rank,
            "lora_params": bench.lora_params, "checkpointing": args.checkpointing, "seq_len": args.seq_len,
            "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
            "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"), "label": args.label,
            "pinned_cpus": sorted(pinned) if pinned else None, "host_cpus": os.cpu_count(),
        }
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({**base, "kind": "step", "step_s": statistics.median(step_times),
                                     "step_s_all": step_times}) + "\n")
            handle.write(json.dumps({**base, "kind": "allreduce", "grad_elements": bench.lora_params,
                                     "seconds": statistics.median(grads)}) + "\n")
            for elements, seconds in synthetic.items():
                handle.write(json.dumps({**base, "kind": "allreduce", "grad_elements": elements,
                                         "seconds": seconds, "synthetic": True}) + "\n")
        print(json.dumps({"gpus": world, "label": args.label, "step_s": statistics.median(step_times),
                          "allreduce_s": statistics.median(grads), "synthetic": synthetic}), flush=True)
    bench.close()
    torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
