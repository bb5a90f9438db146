"""``resbackbone export``: a run's checkpoint, a recipe's model or a backbone to ONNX, ``.pt2`` or AOTInductor."""

from __future__ import annotations

import argparse
import json

from .common import Subparsers

__all__ = ["COMMANDS", "add_parsers"]

COMMANDS = ("export",)


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a side (512) or HEIGHT,WIDTH (480,640)") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a side (512) or HEIGHT,WIDTH (480,640)")
    return (parts[0], parts[-1])


def _cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_model

    result = export_model(
        args.source,
        args.out,
        format=args.format,
        argmax=args.argmax,
        fold_bn=not args.no_fold_bn,
        dynamic=tuple(a for a in args.dynamic.split(",") if a) if args.dynamic is not None else None,
        opset=args.opset,
        dtype=args.dtype,
        device=args.device,
        example_size=args.size,
        weights=args.weights,
        data_root=args.data,
        overrides=args.set,
        check=args.check,
    )
    info = result.info
    what = f"{info.head} on {info.backbone}" if info.head else f"{info.backbone} backbone"
    free = ", ".join(info.dynamic_axes) or "none"
    exporter = f"{info.exporter} exporter, opset {info.opset}" if result.format == "onnx" else info.exporter
    print(f"Exported {what} ({info.task}) to {result.path} [{exporter}; {info.dtype}; free axes: {free}]")
    print(f"  input {info.input_name}: (N, {info.in_chans}, H, W) float in [0, 1], normalised inside the graph")
    print(f"  outputs: {', '.join(info.output_names)}")
    if result.check:
        print("  check: " + json.dumps(result.check))
    return 0


def add_parsers(sub: Subparsers) -> None:
    """Add ``export``."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint, recipe or backbone to ONNX, torch.export (.pt2) or AOTInductor",
        description="Export a run's best.pt/last.pt, a recipe's model, or a backbone by name, with its metadata "
        "(task, classes, mean/std, input size) and its preprocessing inside the graph. Backbones and segmenters "
        "export with the dynamo exporter (batch, height and width free); detectors with the TorchScript-based "
        "one (height and width free, batch 1). See docs/export.md.",
    )
    p.add_argument("source", help="best.pt/last.pt of a run, a recipe .yaml, or a backbone name (resbackbone list)")
    p.add_argument("--out", required=True, help="file to write: .onnx, or .pt2")
    p.add_argument("--format", choices=("onnx", "pt2", "aoti"), help="default: from --out's suffix (aoti: .pt2)")
    p.add_argument("--argmax", action="store_true", help="segmenters: output the class map instead of logits")
    p.add_argument("--no-fold-bn", action="store_true", help="keep batch norms (folded into convolutions by default)")
    p.add_argument(
        "--dynamic",
        metavar="AXES",
        help="free input axes, comma-separated from batch,height,width ('' for none); default all the model takes",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default 18 with the dynamo exporter, 17 with TorchScript's)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"), help="float16: CUDA only")
    p.add_argument("--device", default="cpu", help="device to trace on: cpu or cuda (cpu)")
    p.add_argument("--size", type=_size, metavar="H[,W]", help="size to trace at (default: the recipe's image size)")
    p.add_argument("--weights", help="a backbone name's weights: imagenet, a file, … (default: random)")
    p.add_argument("--data", metavar="PATH", help="a recipe's dataset root (for its class names)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="a recipe's overrides")
    p.add_argument(
        "--check", action="store_true", help="ONNX: compare ONNX Runtime with PyTorch at two other sizes, report"
    )
    p.set_defaults(func=_cmd_export)
