"""Cost of a DeepLabV3+ training step with ``run.malloc: system`` and ``reuse``, side by side.

Each mode runs in its own process (``mallopt`` settings last for a process's life): the same
model, batch, loss and optimiser, two warm-up steps, then ``--steps`` timed ones, with the
process's minor page faults and kernel time per step. Rounds alternate the two modes to share the
machine's noise; the ratio of medians is reported.

    python benchmarks/malloc_step.py                         # ResNet-18, 8 x 256² crops, 6 steps x 2 rounds
    python benchmarks/malloc_step.py --backbone resnet50 --batch 4 --steps 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from resbackbone.bench import machine_info

STEP = """
import json, resource, sys, time, torch
from resbackbone.engine.acceleration import configure_malloc
from resbackbone.heads import build_segmenter
mode, backbone, batch, size, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
applied = configure_malloc(mode)
torch.manual_seed(0)
model = build_segmenter("deeplabv3plus", backbone=backbone, num_classes=2, output_stride=16)
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch, size, size))
def step():
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(2):
    step()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    step()
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
faults, kernel = after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime
print(json.dumps({"applied": applied, "ms": 1e3 * seconds / steps, "faults": faults / steps,
                  "kernel_s": kernel / steps}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    results: dict[str, list[dict]] = {"system": [], "reuse": []}
    for _ in range(args.rounds):
        for mode in results:
            cmd = [sys.executable, "-c", STEP, mode, args.backbone, str(args.batch), str(args.size), str(args.steps)]
            results[mode].append(json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout))
    machine = machine_info()
    print(f"{machine['cpu_model']} ({machine['cpu_cores']} cores), {args.backbone}, {args.batch} x {args.size}²")
    for mode, runs in results.items():
        ms = ", ".join(f"{r['ms']:.0f}" for r in runs)
        faults = statistics.median(r["faults"] for r in runs)
        kernel = statistics.median(r["kernel_s"] for r in runs)
        print(f"  {mode:6s} ms/step {ms}; faults/step {faults:,.0f}; kernel {kernel:.2f} s/step")
    if not results["reuse"][0]["applied"]:
        print("  run.malloc: reuse does not apply here (Linux with glibc only): both rows are glibc as it is")
    ratio = statistics.median(r["ms"] for r in results["reuse"]) / statistics.median(r["ms"] for r in results["system"])
    print(f"  reuse / system, median step time: {ratio:.2f}")


if __name__ == "__main__":
    main()
