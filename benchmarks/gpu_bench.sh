#!/usr/bin/env bash
# CUDA figures for benchmarks/README.md, about 3–4 minutes on one H100:
#   1. resnet50, batch 64, 224×224, C2–C5: timm / torchvision / smp (fp32, eager) side by side with
#      ours eager fp32, fast fp32 and fast bf16 (BN folded, channels-last, torch.compile);
#   2. forward+backward of the backbone and of Faster R-CNN + FPN, with and without grad checkpointing.
# Needs torch with CUDA, torchvision, timm, segmentation-models-pytorch and matplotlib; run from the
# repository root or anywhere (PYTHONPATH defaults to the repository). Writes gpu_inference.{json,md,png}
# and gpu_train.{json,md,png} into ${OUT:-.}. Exit status: 0 when both parts ran, else 1.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="${PYTHONPATH:-$ROOT}"
OUT="${OUT:-.}"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$OUT"
cd "$ROOT" || exit 1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_bench.sh: torch sees no CUDA device; nothing to do." >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true

status=0

echo "== 1/2 inference: resnet50, batch 64, 224x224, cuda"
timeout 330 "$PY" -m resbackbone bench resnet50 --batch-sizes 64 --input-sizes 224 --devices cuda \
    --modes eager,fast,fast-bf16 --competitors timm,torchvision,smp --warmup 5 --repeats 30 \
    --out "$OUT" --stem gpu_inference || { echo "gpu_bench.sh: inference part failed ($?)" >&2; status=1; }

echo "== 2/2 training: resnet50, batch 64, 224x224, cuda, with and without grad checkpointing"
timeout 240 "$PY" -m resbackbone bench resnet50 --batch-sizes 64 --input-sizes 224 --devices cuda \
    --train-only --train-models backbone,fasterrcnn_fpn --warmup 3 --repeats 10 \
    --out "$OUT" --stem gpu_train || { echo "gpu_bench.sh: training part failed ($?)" >&2; status=1; }

ls -l "$OUT"/gpu_inference.* "$OUT"/gpu_train.* 2>/dev/null || true
exit "$status"
