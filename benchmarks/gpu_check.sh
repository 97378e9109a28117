#!/usr/bin/env bash
# The GPU checks, in one short run: the quickstart end to end on CUDA (bf16 autocast, channels_last, feature
# caching, checkpoints, best-model export), what freezing saves on a GPU, and AMP throughput.
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export TLKIT_CACHE=/tmp/tlkit-gpu-cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, optuna; print('torch', torch.__version__, 'timm', timm.__version__,
'optuna', optuna.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
python3 -m tlkit.sweep experiments/digits.py --device cuda --out /tmp/digits_gpu > "$OUT/digits_gpu.log" 2>&1
echo "digits quickstart on cuda: exit $? in $(( $(date +%s) - start )) s"
tail -n 30 "$OUT/digits_gpu.log"
cp /tmp/digits_gpu/summary.csv "$OUT/digits_gpu_summary.csv"
python3 benchmarks/frozen_cost.py --backbone resnet18 --images 8192 --image-size 128 --device cuda \
  | tee "$OUT/frozen_cost_gpu.txt"
python3 benchmarks/gpu_throughput.py | tee "$OUT/gpu_throughput.txt"
