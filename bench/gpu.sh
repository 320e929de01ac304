#!/usr/bin/env bash
# The one-GPU measurements, in one go:
#   1. bench/scaling.py on a dask-cuda worker (LocalCUDACluster): one rank, DeepSpeed
#      ZeRO-2 in bf16 with torch.distributed over NCCL;
#   2. bench/trl_compare.py on the GPU: siirl and TRL's GRPOTrainer on identical work.
#   3. trainer.offload and rollout.sleep_during_update: peak GPU memory of a short run without and with.
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

# 3. The GPU memory options: the same short run with everything on the GPU, then with ZeRO-3,
#    parameters and optimizer state offloaded to CPU memory and vLLM asleep during the update
#    (perf/gpu_peak_mib in each run's metrics.jsonl: the trainer's peak allocation per iteration).
SLEEP=""
[ "$BACKEND" = vllm ] && SLEEP="rollout.sleep_during_update=true"
for MODE in plain offload; do
  EXTRA=""
  [ "$MODE" = offload ] && EXTRA="trainer.zero_stage=3 trainer.offload=all $SLEEP"
  rm -rf "$OUT/gpu_memory_$MODE"
  timeout "${MEMORY_TIMEOUT:-240}" "$PY" -m flows.cli train cluster=local_cuda model=medium model.warm_start=false \
    "rollout=$BACKEND" trainer.steps=3 trainer.eval_every=0 trainer.save_every=0 $EXTRA \
    "storage.uri=$OUT/gpu_memory_$MODE" > "$OUT/gpu_memory_$MODE.log" 2>&1 \
    || echo "the $MODE memory run failed (see $OUT/gpu_memory_$MODE.log)"
  grep -h '"step": 3' "$OUT/gpu_memory_$MODE/metrics.jsonl" 2>/dev/null \
    | "$PY" -c "import json,sys; m=json.loads(sys.stdin.read()); print('$MODE', 'gpu_peak_mib', m.get('perf/gpu_peak_mib'))"
done
