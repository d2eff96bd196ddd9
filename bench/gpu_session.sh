#!/usr/bin/env bash
# One GPU-machine call: the rounds named in $@ (tests, qwen, parity, llama, long), in order.
# Everything is logged to $OUT/session.log, results to $OUT/results.jsonl, profiles to $OUT/profile.txt;
# a short table is printed last. Run from the repository root.
set -uo pipefail
out=${OUT:?set OUT}
log=$out/session.log
export TRITON_CACHE_DIR=$(mktemp -d) SPOTTUNE_CACHE=$(mktemp -d) HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$log"
for round in "$@"; do
  started=$(date +%s)
  echo "== round $round" >> "$log"
  case $round in
    tests) timeout 300 python3 -m pytest -q -m cuda tests/kernels tests/fast -p no:cacheprovider 2>&1 | tail -30 | tee -a "$log" ;;
    qwen) timeout 120 python3 bench/qlora_speed.py --model qwen2-1.5b --out "$out" --runs ${QWEN_RUNS:-hf:2x4 hf-nockpt:2x4 hf:8x1 \
            fast:2x4:offload:ce=256 fast:4x2:offload:ce=128:tile=4096 fast:8x1:offload:ce=128:tile=2048 \
            fast:4x2:none:prof fast:8x1:full} >> "$log" 2>&1 ;;
    parity) timeout 90 python3 bench/qlora_parity.py --model qwen2-1.5b --steps 50 --out "$out" >> "$log" 2>&1 ;;
    llama) timeout 260 python3 bench/qlora_speed.py --model llama-3-8b --out "$out" --runs ${LLAMA_RUNS:-hf:2x4 hf:8x1 \
            fast:2x4:offload:ce=256:tile=2048 fast:4x2:offload:ce=256:tile=2048 fast:8x1:full fast:2x4:none} >> "$log" 2>&1 ;;
    long) timeout 110 python3 bench/long_context.py --model llama-3-8b --layers 4 \
            --lengths ${LONG_LENGTHS:-131072 262144 409600} --out "$out" >> "$log" 2>&1 ;;
  esac
  echo "== $round: $(( $(date +%s) - started ))s" | tee -a "$log"
done
grep -E "Error|error|Traceback" "$log" | grep -v -i warn | head -20
python3 bench/table.py "$out/results.jsonl"
