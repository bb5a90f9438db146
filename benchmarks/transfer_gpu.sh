#!/usr/bin/env bash
# The label-efficiency study at its GPU configuration (benchmarks/transfer_configs.py, "gpu"): full-resolution
# BCCD, 512 px DSB2018, 600 updates per cell, 200 epochs of SimCLR on the training images of both, AMP bf16,
# channels-last. Resumable: rerun the same line after an interruption. Run from the repository root:
#   DATA=../shared/data OUT=results bash benchmarks/transfer_gpu.sh
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/transfer.py --config gpu --data "${DATA:-../shared/data}" --out "${OUT:-.}/transfer-gpu"
