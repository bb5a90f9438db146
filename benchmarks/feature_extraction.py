"""C2–C5 feature-extraction benchmark, side by side with timm, torchvision and smp.

The same code as ``resbackbone bench``; see benchmarks/README.md. Examples::

    python benchmarks/feature_extraction.py resnet50 -b 8 -s 224 --devices cpu
    python benchmarks/feature_extraction.py resnet50 -b 64 --devices cuda --modes eager,fast-bf16 --train
"""

from __future__ import annotations

from resbackbone.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
