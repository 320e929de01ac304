#!/usr/bin/env bash
# The one-GPU measurements, in one go:
#   1. bench/scaling.py on a dask-cuda worker (LocalCUDACluster): one rank, DeepSpeed
#      ZeRO-2 in bf16 with torch.distributed over NCCL;
#   2. bench/trl_compare.py on the GPU: siirl and TRL's GRPOTrainer on identical work.
# siirl rolls out with vLLM when it is installed, else with transformers (`hf`).
#
#   bash bench/gpu.sh [OUT_DIR] [PYTHON]      # PYTHON must have siirl's GPU stack and TRL
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/benchmarks}
PY=${2:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
BACKEND=hf
"$PY" -c "import vllm" 2>/dev/null && BACKEND=vllm
echo "siirl rollout backend: $BACKEND"

timeout "${SCALING_TIMEOUT:-180}" "$PY" bench/scaling.py --cluster local_cuda --ranks 1 --iterations 15 --warmup 3 \
  --out "$OUT/scaling_gpu.json" "rollout=$BACKEND" 2>&1 | tee "$OUT/scaling_gpu.log" || echo "scaling on the GPU failed (see $OUT/scaling_gpu.log)"

timeout "${COMPARE_TIMEOUT:-360}" "$PY" bench/trl_compare.py --device cuda --sides "siirl-$BACKEND,trl" \
  --trl-python "$PY" --scaling-size "" --sizes tiny,small,medium --iterations 4 --repeats 2 --out "$OUT/trl_compare_gpu" 2>&1 \
  | tee "$OUT/trl_compare_gpu.log" || echo "the GPU comparison failed (see $OUT/trl_compare_gpu.log)"
