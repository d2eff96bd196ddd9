#!/usr/bin/env bash
# One GPU-machine call: CUDA tests, then the benchmark rounds named in $@ (qwen, parity, llama, long).
# Logs and results.jsonl go to $OUT; a short table is printed last. Run from the repository root.
set -uo pipefail
out=${OUT:?set OUT}
export TRITON_CACHE_DIR=$(mktemp -d) SPOTTUNE_CACHE=$(mktemp -d) HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
for round in "$@"; do
  started=$(date +%s)
  case $round in
    tests) timeout 300 python3 -m pytest -q -x -m cuda tests/kernels tests/fast 2>&1 | tail -25 | tee "$out/tests.log" ;;
    qwen) timeout 400 python3 bench/qlora_speed.py --model qwen2-1.5b --out "$out" --runs \
            hf:2x4 hf:8x1 fast:2x4:offload:ce=256 fast:1x8:offload:ce=128 fast:2x4:full fast:4x2:none fast:8x1:full \
            2>&1 | grep -v -i warn > "$out/qwen.log" ;;
    parity) timeout 300 python3 bench/qlora_parity.py --model qwen2-1.5b --steps 50 --out "$out" > "$out/parity.log" 2>&1 ;;
    llama) timeout 500 python3 bench/qlora_speed.py --model llama-3-8b --out "$out" --runs \
            hf:2x4 hf:8x1 fast:2x4:offload:ce=256 fast:2x4:full fast:4x2:full fast:2x4:none \
            2>&1 | grep -v -i warn > "$out/llama.log" ;;
    long) timeout 400 python3 bench/long_context.py --model llama-3-8b --layers 4 \
            --lengths 131072 262144 409600 524288 --out "$out" > "$out/long.log" 2>&1 ;;
  esac
  echo "== $round: $(( $(date +%s) - started ))s"
done
python3 bench/table.py "$out/results.jsonl"
