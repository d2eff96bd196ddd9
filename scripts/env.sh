# Sourced by scripts/*: a self-contained environment (caches and Ray inside the checkout, no hub access).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
export SPOTTUNE_CACHE="${SPOTTUNE_CACHE:-$root/.cache/spottune}"
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR="$root/.cache/torchinductor" TRITON_CACHE_DIR="$root/.cache/triton"
export MPLCONFIGDIR="$root/.cache/matplotlib"
