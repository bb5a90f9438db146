#!/usr/bin/env bash
# GPU check: a few recipe steps with AMP bf16 and channels-last, then the GPU tests. Under 4 minutes
# on one H100. Run from the repository root: bash benchmarks/gpu_check.sh
set -euo pipefail
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/gpu_check.py --batch 32 --steps 20 --size 256
python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider
