#!/usr/bin/env bash
# The checks and benchmarks that need an NVIDIA GPU: towers on two devices (if present),
# bfloat16 against float32, and the paper net's bf16 speed at batch 256 (synthetic batches
# and end to end through grain). Run from the repository root on a machine with a GPU:
#
#   experiments/gpu_check.sh [OUTPUT_DIR]      # default: $OUT, else ./gpu_check_out
#
# Installs the CUDA build of jaxlib if JAX sees no GPU, then runs experiments/gpu_check.py,
# which prints one PASS/FAIL line per check and the tables (written to OUTPUT_DIR). Add
# --record by hand (GPU_CHECK_RECORD=1) to append them to experiments/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -m pip install -q -r requirements.txt
if ! python -c 'import jax, sys; sys.exit(jax.devices()[0].platform != "gpu")' 2>/dev/null; then
  python -m pip install -q "jax[cuda12]"
fi
python experiments/gpu_check.py --output="$out" --batch="${GPU_CHECK_BATCH:-256}" \
  ${GPU_CHECK_RECORD:+--record}
