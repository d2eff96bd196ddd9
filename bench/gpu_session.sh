#!/usr/bin/env bash
# One GPU-machine call: the rounds named in $@, in order. Rounds: tests, qwen, qwen-fixed, qwen-lean-graphs (each
# lean run with its checkpointed layers as CUDA graphs, first in a process of its own), qwen-unsloth,
# llama, llama-fixed, llama-unsloth, parity, long, two-gpu, two-gpu-diag (2-GPU step
# with and without each rank pinned to its own cores, and two 1-GPU runs at once), ray-two-gpu, ray-two-gpu-none
# (activation checkpointing none, throughput only), ray-two-gpu-graphs (the same with training.cuda_graphs) and
# ray-resume-graphs (its killed-and-resumed run; the ray rounds need bench/ray_site.sh's tarballs unpacked onto
# PYTHONPATH as well), calibrate (the estimator's default matrix, 2 min), calibrate-heldout (its held-out and
# offload matrices, 6 min) and calibrate-graphs (its graphs matrix: layers as CUDA graphs beside eager twins, 2 min;
# cost_models/README.md says how the rows are merged). `-fixed` repeats the lean runs with the allocator's
# expandable segments off (the engine's default before issue 13) for a before/after in the same call;
# `-unsloth` runs Unsloth in its own process (`../shared/tools/gpu-wheels --with-unsloth`).
# Everything is logged to $OUT/session.log, results to $OUT/results.jsonl, profiles to $OUT/profile.txt;
# a short table is printed last. A profiled run (`:prof`) goes last in its process: a run of the same kind
# right after a profiled one ran 31 % slower (2026-11-29; the profiler's CUDA activity tracing may stay on).
# Run from the repository root.
set -uo pipefail
out=${OUT:?set OUT}
log=$out/session.log
export TRITON_CACHE_DIR=$(mktemp -d) SPOTTUNE_CACHE=$(mktemp -d) HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
STEPS=${STEPS:---warmup 2 --steps 5}
QWEN_LEAN=${QWEN_LEAN:-fast:2x4:offload:ce=256 fast:4x2:offload:ce=128:tile=2048 fast:4x2:offload:ce=128:tile=4096 fast:8x1:offload:ce=128:tile=2048}
LLAMA_LEAN=${LLAMA_LEAN:-fast:2x4:offload:ce=256:tile=2048 fast:4x2:offload:ce=256:tile=2048 fast:8x1:offload:ce=256:tile=2048}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$log"
speed() { local limit=$1; shift; timeout "$limit" python3 bench/qlora_speed.py --out "$out" $STEPS "$@" >> "$log" 2>&1; }
fixed() { PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False "$@"; }
for round in "$@"; do
  started=$(date +%s)
  echo "== round $round" >> "$log"
  case $round in
    tests) timeout 300 python3 -m pytest -q -m cuda tests/kernels tests/fast -p no:cacheprovider 2>&1 | tail -30 | tee -a "$log" ;;
    qwen) speed 200 --model qwen2-1.5b --runs ${QWEN_RUNS:-hf:2x4 hf-nockpt:2x4 $QWEN_LEAN \
            fast:8x1:full fast:4x2:none fast:4x2:none:prof} ;;
    qwen-fixed) fixed speed 100 --model qwen2-1.5b --runs ${QWEN_FIXED:-$QWEN_LEAN} ;;
    qwen-lean-graphs) for run in ${QWEN_LEAN_GRAPHS:-fast:1x8:offload:ce=64:graphs fast:2x4:offload:ce=64:tile=1024:graphs \
            fast:4x2:offload:ce=128:tile=2048:graphs}; do speed 100 --model qwen2-1.5b --runs $run; done ;;
    qwen-unsloth) timeout 240 python3 bench/unsloth_speed.py --model qwen2-1.5b --out "$out" $STEPS \
            --runs ${QWEN_UNSLOTH:-unsloth:2x4 unsloth:8x1} >> "$log" 2>&1 ;;
    llama) speed 330 --model llama-3-8b --runs ${LLAMA_RUNS:-hf:2x4 hf-nockpt:2x4 $LLAMA_LEAN \
            fast:8x1:full fast:2x4:none fast:2x4:none:prof} ;;
    llama-fixed) fixed speed 150 --model llama-3-8b --runs ${LLAMA_FIXED:-$LLAMA_LEAN} ;;
    llama-unsloth) timeout 300 python3 bench/unsloth_speed.py --model llama-3-8b --out "$out" $STEPS \
            --runs ${LLAMA_UNSLOTH:-unsloth:2x4 unsloth:8x1} >> "$log" 2>&1 ;;
    parity) timeout 90 python3 bench/qlora_parity.py --model qwen2-1.5b --steps 50 --out "$out" >> "$log" 2>&1 ;;
    two-gpu) for gpus in 2 1; do timeout 200 python3 -m torch.distributed.run --standalone --nproc_per_node $gpus \
            bench/two_gpu_step.py --steps 5 --warmup 2 --pin --label pinned --out "$out/multi_gpu.jsonl"; done >> "$log" 2>&1 ;;
    two-gpu-diag) lscpu | grep -E "Model name|Thread|Core|Socket|NUMA" >> "$log"
            step="timeout 150 python3 -m torch.distributed.run --standalone"
            args="bench/two_gpu_step.py --steps 5 --warmup 2 --out $out/multi_gpu.jsonl"
            { $step --nproc_per_node 2 $args --label default
              $step --nproc_per_node 2 $args --label pinned --pin
              CUDA_VISIBLE_DEVICES=0 $step --nproc_per_node 1 $args --label concurrent --work /tmp/mg0 &
              CUDA_VISIBLE_DEVICES=1 $step --nproc_per_node 1 $args --label concurrent --work /tmp/mg1; wait
              $step --nproc_per_node 1 $args --label alone; } >> "$log" 2>&1 ;;
    ray-two-gpu) timeout 590 python3 bench/ray_two_gpu.py --out "$out" >> "$log" 2>&1 ;;
    ray-two-gpu-none) timeout 200 python3 bench/ray_two_gpu.py --checkpointing none --steps 16 --resume-steps 0 \
            --deadline 190 --out "$out/none" >> "$log" 2>&1 ;;
    ray-two-gpu-graphs) timeout 200 python3 bench/ray_two_gpu.py --checkpointing none --cuda-graphs --steps 16 \
            --resume-steps 0 --deadline 190 --out "$out/graphs" >> "$log" 2>&1 ;;
    ray-resume-graphs) timeout 300 python3 bench/ray_two_gpu.py --checkpointing none --cuda-graphs --resume-only \
            --resume-steps 6 --deadline 290 --out "$out/graphs-resume" >> "$log" 2>&1 ;;
    calibrate) timeout 200 python3 bench/calibrate_estimator.py --engine auto --out "$out/calibration.csv" \
            --deadline 190 >> "$log" 2>&1 ;;
    calibrate-heldout) for m in "heldout 160" "heldout2 135" "fitoffload 50"; do set -- $m
            timeout $(( $2 + 25 )) python3 bench/calibrate_estimator.py --matrix $1 --out "$out/$1.csv" \
            --stats-out "$out/$1_stats.jsonl" --deadline $2; done >> "$log" 2>&1 ;;
    calibrate-graphs) timeout 165 python3 bench/calibrate_estimator.py --matrix graphs --out "$out/graphs.csv" \
            --stats-out "$out/graphs_stats.jsonl" --deadline 135 >> "$log" 2>&1 ;;
    long) timeout 110 python3 bench/long_context.py --model llama-3-8b --layers 4 \
            --lengths ${LONG_LENGTHS:-131072 262144 409600} --out "$out" >> "$log" 2>&1 ;;
  esac
  echo "== $round: $(( $(date +%s) - started ))s" | tee -a "$log"
done
grep -E "Error|error|Traceback" "$log" | grep -v -i warn | head -20
python3 bench/table.py "$out/results.jsonl"
