"""``resbackbone finetune``, ``evaluate`` and ``predict``: runs of a recipe and their checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import Subparsers, add_recipe_args

__all__ = ["COMMANDS", "add_parsers"]

FAST_HELP = (
    "run the fast path: batch norms folded, memory format measured, torch.compile, bf16 where the device "
    "computes it natively and faster than fp32 (a CPU with AMX, a recent GPU)"
)

COMMANDS = ("finetune", "evaluate", "predict")


def _cmd_finetune(args: argparse.Namespace) -> int:
    from ..engine import Trainer, distributed
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    output = Path(args.output) if args.output else None
    try:
        Trainer(recipe, resume=args.resume, progress=not args.no_progress, output=output).fit()
        distributed.teardown(wait=True)
    finally:
        distributed.teardown()
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..engine import evaluate_checkpoint
    from ..engine.builders import describe_inference
    from ..recipes import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set, data_root=args.data)
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.split}"
    metrics = evaluate_checkpoint(
        recipe, args.checkpoint, split=args.split, device=args.device, out_dir=out, worst=args.worst, fast=args.fast
    )
    print(json.dumps(metrics, indent=2))
    print(
        f"{args.split}: {describe_inference(recipe)}, {metrics['images_per_s']:.2f} images/s; "
        f"per-image metrics in {out / 'per_image.csv'}, the {args.worst} worst images drawn in {out}/",
        file=sys.stderr,
    )
    return 0


def onnx_providers(device: str) -> list[str] | None:
    """The ONNX Runtime providers ``--device`` asks for: ``auto`` lets ONNX Runtime choose (CUDA when it has it)."""
    if device == "auto":
        return None
    kind, _, index = device.partition(":")
    if index and index != "0":
        raise ValueError(
            f"--device {device!r}: an .onnx model runs on the first GPU only here; pass --device cuda, or pick the "
            "GPU with CUDA_VISIBLE_DEVICES."
        )
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"--device {device!r}: an .onnx model runs on auto, cpu or cuda (ONNX Runtime's providers).")


def _cmd_predict(args: argparse.Namespace) -> int:
    options = {
        "score_thresh": args.score_thresh,
        "overlays": not args.no_overlays,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
    }
    if Path(args.model).suffix == ".onnx":  # ONNX Runtime alone: no torch imported
        if args.fast:
            raise ValueError("--fast applies to PyTorch checkpoints; an .onnx file runs in ONNX Runtime as it is.")
        from ..runtime import predict_onnx

        result = predict_onnx(args.model, args.images, args.out, providers=onnx_providers(args.device), **options)
    else:
        from ..engine import predict

        result = predict(args.model, args.images, args.out, device=args.device, fast=args.fast, **options)
    done = f"; {result.already_done} already in {result.path.name} from an earlier run" if result.already_done else ""
    print(f"Predicted on {result.written} images{done}: {result.path}; masks and overlays in {result.path.parent}/")
    if result.skipped:
        import sys

        print(
            f"Skipped {len(result.skipped)} images (listed in {result.path.parent / 'skipped.jsonl'}):", file=sys.stderr
        )
        for item in result.skipped:
            print(f"  {item['image']}: {item['reason']}", file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``finetune``, ``evaluate`` and ``predict``."""
    p = sub.add_parser("finetune", help="fine-tune a detector or segmenter from a recipe")
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    p.add_argument("--output", metavar="DIR", help="run folder (default: run.output of the recipe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split of a recipe's dataset")
    add_recipe_args(p)
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for per_image.csv and the worst images (default: CHECKPOINT's folder/eval_SPLIT)",
    )
    p.add_argument("--worst", type=int, default=8, metavar="N", help="how many of the worst images to draw (default 8)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "predict",
        help="predict on image files: JSON lines, masks and overlay PNGs (a checkpoint, or an exported .onnx)",
        description="Predict on image files. A run's best.pt/last.pt runs in PyTorch; an .onnx file written by "
        "`resbackbone export` runs in ONNX Runtime alone (no torch). Images that cannot be read are skipped and "
        "listed (exit status 1); a second run with the same --out does only the images not done yet.",
    )
    p.add_argument("model", help="best.pt or last.pt of a run, or an exported .onnx file")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda… (.onnx: auto is CUDA where onnxruntime has it)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detection: minimum score kept (0.5)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward (1)")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    p.add_argument("--no-overlays", action="store_true", help="write no overlay PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)
