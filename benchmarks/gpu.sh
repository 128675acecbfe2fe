#!/usr/bin/env bash
# The GPU table of benchmarks/RESULTS.md: the scale case on a CUDA device, at
# the GPU size's batch (4096) and at a batch large enough for each step to
# move tens of megabytes. Needs jax with CUDA; jaxlr is used from this checkout.
#
# Usage: bash benchmarks/gpu.sh [OUTPUT_DIR]
set -uo pipefail
out=${1:-benchmarks/gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tee -a "$out/gpu.txt"
for batch in 4096 262144; do
    timeout 300 python3 -m benchmarks scale --device gpu --batch-size "$batch" \
        --json "$out/scale-$batch.json" 2>"$out/scale-$batch.err" | tee "$out/scale-$batch.md"
    tail -n 3 "$out/scale-$batch.err"
done
