"""``export_model``: a training checkpoint, a recipe or a backbone out of PyTorch, to ONNX, ``.pt2`` or AOTInductor.

Example::

    from resbackbone.export import export_model

    export_model("runs/bccd_faster_rcnn_cpu/best.pt", "bccd.onnx", check=True)   # boxes, scores, labels
    export_model("runs/dsb/best.pt", "dsb.onnx", argmax=True)                     # class map
    export_model("resnet50", "resnet50.onnx", weights="imagenet")                 # C2–C5

See ``docs/export.md`` for what each format supports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone
from ..runtime import ModelInfo
from .families import AXES, FAMILIES, FORMATS, FamilySpec
from .graphs import BackboneGraph, DetectorGraph, SegmenterGraph
from .writers import MIN_SIDE, write_aoti, write_onnx, write_pt2

__all__ = ["ExportResult", "export_model", "load_source"]

_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: The file.
        format: ``"onnx"``, ``"pt2"`` or ``"aoti"``.
        info: The metadata written with it.
        check: With ``check=True`` (ONNX): the parity of ONNX Runtime against PyTorch, by input size.
    """

    path: Path
    format: str
    info: ModelInfo
    check: dict[str, Any] = field(default_factory=dict)


def _is_checkpoint(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".ckpt") and path.is_file()


def load_source(
    source: str | os.PathLike[str] | nn.Module,
    *,
    weights: str | None = None,
    data_root: str | None = None,
    overrides: list[str] | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """The model ``source`` names, in eval mode, and what the metadata says of it (exporter fields unset).

    Args:
        source: A run's ``best.pt``/``last.pt``; a recipe YAML (the model it builds, with the
            weights it names: its head untrained unless ``model.weights`` has one); a
            :class:`~resbackbone.Backbone`; a segmenter or detector object (classes numbered
            ``class_0``…, image size the traced one); or a backbone's registry name.
        weights: A registry name's weights (``"imagenet"``, a file…); ``None`` for random.
        data_root: A recipe's dataset root (for its class names).
        overrides: A recipe's ``--set`` overrides.

    Raises:
        ValueError: ``source`` is none of these, or a file that cannot be read.
    """
    from .. import __version__

    common = {"resbackbone_version": __version__, "torch_version": torch.__version__}
    if isinstance(source, Backbone):
        return source.eval(), _backbone_info(source, source=source.name, **common)
    if isinstance(source, nn.Module):
        return source.eval(), _module_info(source, **common)
    path = Path(source)
    if _is_checkpoint(path) or path.suffix in (".yaml", ".yml"):
        if weights is not None:
            raise ValueError(
                f"weights={weights!r} applies to a backbone name; {path} names its own weights (a run's trained "
                "ones, or a recipe's model.weights / model.backbone_weights): drop --weights."
            )
        if _is_checkpoint(path):
            from ..engine import load_model

            model, recipe, classes = load_model(path)
        else:
            from ..data import class_names
            from ..engine.builders import build_model
            from ..recipes import load_recipe

            recipe = load_recipe(path, overrides=overrides or [], data_root=data_root)
            classes = class_names(recipe.data, recipe.task)
            model = build_model(recipe, len(classes) + 1 if recipe.task == "detection" else len(classes)).eval()
        from ..engine.builders import find_backbone
        from ..engine.predict import model_info

        info = model_info(recipe, classes, find_backbone(model), source=str(path))
        return model.eval(), info
    if path.suffix or path.exists():
        raise ValueError(
            f"Cannot export {source}: expected a run's best.pt or last.pt, a recipe .yaml, or a backbone name "
            "(resbackbone list)."
        )
    from ..backbone import create_backbone

    backbone = create_backbone(str(source), weights=weights).eval()
    return backbone, _backbone_info(backbone, source=str(source) + (f" ({weights})" if weights else ""), **common)


def _module_info(model: nn.Module, **values: Any) -> ModelInfo:
    """A built segmenter or detector: no recipe, so classes are numbered and the image size is the traced one."""
    from ..engine.builders import find_backbone
    from ..heads import detector_head

    head = detector_head(model)
    if head == "faster_rcnn":
        task, count = "detection", model.roi_heads.box_predictor.cls_score.out_features - 1
    elif head == "retinanet":
        task, count = "detection", model.head.classification_head.num_classes - 1
    elif hasattr(model, "num_classes") and hasattr(model, "arch"):
        task, head, count = "segmentation", model.arch, model.num_classes
    else:
        raise ValueError(
            f"Cannot export a {type(model).__name__}: expected a segmenter or detector built by resbackbone "
            "(build_segmenter, build_detector), a Backbone, a run's best.pt/last.pt or a recipe."
        )
    body = find_backbone(model)
    score = getattr(getattr(model, "roi_heads", model), "score_thresh", None)
    return ModelInfo(
        task=task,
        classes=[f"class_{i}" for i in range(count)],
        head=head,
        backbone=body.name,
        in_chans=body.in_chans,
        mean=list(body.mean),
        std=list(body.std),
        score_thresh=score if task == "detection" else None,
        source=f"{type(model).__name__} object",
        **values,
    )


def _backbone_info(backbone: Backbone, **values: Any) -> ModelInfo:
    info = backbone.feature_info
    return ModelInfo(
        task="backbone",
        backbone=backbone.name,
        in_chans=backbone.in_chans,
        mean=list(backbone.mean),
        std=list(backbone.std),
        output="features",
        levels=list(info.names),
        strides=[level.stride for level in info],
        **values,
    )


def _check_request(family: FamilySpec, fmt: str, dynamic: tuple[str, ...], dtype: str, device: torch.device) -> None:
    if fmt not in family.formats:
        raise ValueError(
            f"A {family.title} cannot be exported to {fmt} ({FORMATS[fmt]}): {family.why}. "
            f"Export it to {' or '.join(family.formats)} (a .onnx file)."
        )
    for axis in dynamic:
        if axis not in AXES:
            raise ValueError(f"dynamic axis {axis!r} is not valid: expected some of {AXES}.")
        if axis not in family.axes:
            raise ValueError(
                f"A {family.title} cannot leave its {axis} free: {family.why}. Free axes it takes: "
                f"{', '.join(family.axes)}; drop {axis!r} from --dynamic."
            )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid: expected one of {tuple(_DTYPES)}.")
    if dtype == "float16" and device.type != "cuda":
        raise ValueError(
            "float16 export is for CUDA (ONNX Runtime's CUDA provider, TensorRT): pass device='cuda' (--device "
            f"cuda) on a machine with a GPU; on {device.type}, export float32."
        )


def _graph(model: nn.Module, info: ModelInfo, *, argmax: bool, fold_bn: bool) -> tuple[nn.Module, ModelInfo, int]:
    """The exportable graph of a copy of ``model`` (batch norms folded), and ``info`` with its outputs."""
    from ..optimize import frozen_copy

    model, _, folded = frozen_copy(model, fold_bn=fold_bn)
    if argmax and info.task != "segmentation":
        raise ValueError(
            f"argmax applies to segmenters (a class map instead of logits); {info.source or 'this model'} is a "
            f"{info.task} model: drop --argmax (argmax=False)."
        )
    if info.task == "backbone":
        graph: nn.Module = BackboneGraph(model)
        return graph, replace(info, output_names=graph.output_names), folded
    if info.task == "segmentation":
        graph = SegmenterGraph(model, argmax=argmax)
        output = "class_map" if argmax else "logits"
        return graph, replace(info, output=output, output_names=graph.output_names), folded
    return (
        DetectorGraph(model),
        replace(info, output="detections", output_names=list(DetectorGraph.output_names)),
        folded,
    )


def export_model(
    source: str | os.PathLike[str] | nn.Module,
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    argmax: bool = False,
    fold_bn: bool = True,
    dynamic: tuple[str, ...] | None = None,
    opset: int | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    example_size: tuple[int, int] | None = None,
    weights: str | None = None,
    data_root: str | None = None,
    overrides: list[str] | None = None,
    check: bool = False,
) -> ExportResult:
    """Export a trained model, a recipe's model or a backbone, with its metadata.

    Every graph takes ``(N, in_chans, H, W)`` float images in [0, 1] and normalises
    them inside; see :mod:`resbackbone.export.graphs` for the outputs and
    :data:`~resbackbone.export.families.FAMILIES` for what each family supports.

    Args:
        source: A run's ``best.pt``/``last.pt``, a recipe YAML, a :class:`~resbackbone.Backbone`,
            a segmenter or detector object, or a backbone's registry name.
        out: The file to write (``.onnx`` or ``.pt2``).
        format: ``"onnx"``, ``"pt2"`` or ``"aoti"``; default from ``out``'s suffix.
        argmax: Segmenters: output the class of each pixel instead of the logits.
        fold_bn: Fold batch norms into the convolutions before exporting.
        dynamic: Input axes left free, from ``("batch", "height", "width")``; default every axis
            the family can leave free.
        opset: The ONNX opset; default the family's (18 with the dynamo exporter, 17 with TorchScript's).
        dtype: ``"float32"``, or ``"float16"`` (CUDA only).
        device: Where to trace: ``"cpu"`` or ``"cuda"``.
        example_size: ``(height, width)`` to trace at; default the recipe's image size (224 for a backbone).
        weights: Weights of a backbone given by name.
        data_root: A recipe's dataset root.
        overrides: A recipe's ``--set`` overrides.
        check: ONNX: run the file in ONNX Runtime against PyTorch at two other sizes and report the
            largest relative error (and argmax agreement, or detections matched) in ``result.check``.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ValueError: A format, free axis or dtype the model cannot be exported with (the message says
            what it supports), a source that cannot be read, or ONNX packages missing
            (``pip install 'resbackbone[export]'``).
    """
    out = Path(out)
    fmt = format or _SUFFIXES.get(out.suffix)
    if fmt not in FORMATS:
        raise ValueError(
            f"{out}: cannot tell the format from the suffix {out.suffix!r}; name a .onnx or .pt2 file, or pass "
            f"format= one of {tuple(FORMATS)}."
        )
    if fmt == "aoti" and out.suffix != ".pt2":
        raise ValueError(f"{out}: an AOTInductor package must be a .pt2 file.")
    if check and fmt != "onnx":
        raise ValueError(
            f"check=True (--check) runs the file in ONNX Runtime against PyTorch; a {fmt} export has no such "
            "check. Export to a .onnx file, or leave check off."
        )
    if fmt == "onnx":
        _require_onnx()
    dev = torch.device(device)
    model, info = load_source(source, weights=weights, data_root=data_root, overrides=overrides)
    family = FAMILIES[info.task]
    dynamic = tuple(family.axes if dynamic is None else dynamic)
    _check_request(family, fmt, dynamic, dtype, dev)
    graph, info, folded = _graph(model, info, argmax=argmax, fold_bn=fold_bn)
    graph = graph.to(dev, dtype=_DTYPES[dtype]).eval()
    size = example_size or tuple(info.image_size or (224, 224))
    if min(size) < MIN_SIDE:
        raise ValueError(f"example_size={tuple(size)}: exported graphs take sides of {MIN_SIDE} px or more.")
    # a free batch is traced at 2 (torch.export fixes a traced batch of 1); a fixed one is 1
    batch = family.batch or (2 if "batch" in dynamic else 1)
    example = torch.rand(batch, info.in_chans, *size, generator=torch.Generator().manual_seed(0))
    example = example.to(dev, dtype=_DTYPES[dtype])
    info = replace(
        info,
        exporter=family.exporter if fmt == "onnx" else ("torch.export" if fmt == "pt2" else "aotinductor"),
        opset=(opset or family.opset) if fmt == "onnx" else 0,
        dtype=dtype,
        bn_folded=fold_bn,
        dynamic_axes=list(dynamic),
        batch=None if "batch" in dynamic else batch,
        min_side=MIN_SIDE,
        image_size=info.image_size or (None if info.task == "backbone" else list(size)),
    )
    if fmt == "onnx":
        write_onnx(graph, example, out, info, dynamic=dynamic, opset=info.opset)
    elif fmt == "pt2":
        write_pt2(graph, example, out, info, dynamic=dynamic)
    else:
        write_aoti(graph, example, out, info, dynamic=dynamic)
    result = ExportResult(path=out, format=fmt, info=info)
    result.check["folded_norms"] = folded
    if check and fmt == "onnx":
        from .checks import check_onnx

        result.check |= check_onnx(graph, out, info, size)
    return result


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(
            f"ONNX export needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'resbackbone[export]'."
        )
