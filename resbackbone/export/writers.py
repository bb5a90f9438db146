"""Writing a graph to a file: ONNX (dynamo or TorchScript exporter, metadata in ``metadata_props``),
a ``torch.export`` program (``.pt2``, metadata in its extra files) and an AOTInductor package.

Each writes to a temporary file beside the target and renames it into place:
an export that fails leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime import ModelInfo, atomic_write_bytes

__all__ = ["MAX_SIDE", "METADATA_FILE", "MIN_SIDE", "load_pt2", "write_aoti", "write_onnx", "write_pt2"]

MIN_SIDE = 64
"""Smallest image side an exported graph takes (C5 is 2 pixels at 64; torch.export refuses 1-pixel maps)."""
MAX_SIDE = 16384
MAX_BATCH = 1024
METADATA_FILE = "resbackbone.json"
"""The extra file of a ``.pt2`` that holds the metadata (``ModelInfo.to_metadata()`` as JSON)."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress lines and tracer warnings, kept out of the user's terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    """A path with ``path``'s name in a temporary folder beside it; the folder is removed afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield folder / path.name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _dims(dynamic: Sequence[str]) -> dict[int, Any]:
    """Free axes as ``Dim.DYNAMIC``: a named ``Dim`` is refused when the tracer cannot prove a shape
    relation for every size (DeepLabV3+ joins a map upsampled from stride 16 with the stride-4 one, equal
    at every padded size but not provably so); ``DYNAMIC`` records it as a check instead."""
    dynamic_dim = torch.export.Dim.DYNAMIC
    spec: dict[int, Any] = {}
    if "batch" in dynamic:
        spec[0] = dynamic_dim(min=1, max=MAX_BATCH)
    if "height" in dynamic:
        spec[2] = dynamic_dim(min=MIN_SIDE, max=MAX_SIDE)
    if "width" in dynamic:
        spec[3] = dynamic_dim(min=MIN_SIDE, max=MAX_SIDE)
    return spec


def write_onnx(
    graph: nn.Module, example: Tensor, path: Path, info: ModelInfo, *, dynamic: Sequence[str], opset: int
) -> None:
    """Export ``graph`` to ONNX at ``path`` with ``info``'s exporter, and record ``info`` in ``metadata_props``.

    Args:
        graph: A module from :mod:`resbackbone.export.graphs`, in eval mode.
        example: An input to trace with (its batch must be 2 or more where the batch is free).
        path: The ``.onnx`` file (one file: weights inside).
        info: The metadata; ``info.exporter`` picks the exporter, ``info.output_names`` names the outputs.
        dynamic: Input axes left free.
        opset: The ONNX opset.
    """
    import onnx

    with _temporary(path) as tmp, _quiet(), torch.no_grad():
        if info.exporter == "dynamo":
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=True,
                input_names=[info.input_name],
                output_names=info.output_names,
                dynamic_shapes={"image": _dims(dynamic)},
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        else:
            axes = {
                info.input_name: {i: name for i, name in ((0, "batch"), (2, "height"), (3, "width")) if name in dynamic}
            }
            if info.task == "detection":
                axes |= {name: {0: "detections"} for name in info.output_names}
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[info.input_name],
                output_names=info.output_names,
                dynamic_axes=axes,
                opset_version=opset,
            )
        model = onnx.load(str(tmp))
        del model.metadata_props[:]
        for key, value in info.to_metadata().items():
            model.metadata_props.add(key=key, value=value)
        model.doc_string = f"resbackbone {info.task}: {info.head or info.backbone} ({info.source})"
        onnx.checker.check_model(model)
        atomic_write_bytes(path, model.SerializeToString())


def _exported_program(graph: nn.Module, example: Tensor, dynamic: Sequence[str]) -> Any:
    return torch.export.export(graph, (example,), dynamic_shapes={"image": _dims(dynamic)}, strict=False)


def write_pt2(graph: nn.Module, example: Tensor, path: Path, info: ModelInfo, *, dynamic: Sequence[str]) -> None:
    """Save ``graph`` as a ``torch.export`` program; ``info`` goes in the extra file ``resbackbone.json``."""
    with _temporary(path) as tmp, _quiet(), torch.no_grad():
        program = _exported_program(graph, example, dynamic)
        torch.export.save(program, str(tmp), extra_files={METADATA_FILE: json.dumps(info.to_metadata())})
        os.replace(tmp, path)


def write_aoti(graph: nn.Module, example: Tensor, path: Path, info: ModelInfo, *, dynamic: Sequence[str]) -> None:
    """Compile ``graph`` ahead of time with AOTInductor into a package; ``info`` is its metadata.

    Needs a C++ compiler (and for CUDA, the CUDA toolkit); takes minutes.
    Load it with ``torch._inductor.aoti_load_package(path)`` (Python) or
    ``torch::inductor::AOTIModelPackageLoader`` (C++).
    """
    from torch._inductor import aoti_compile_and_package

    with _temporary(path) as tmp, _quiet(), torch.no_grad():
        program = _exported_program(graph, example, dynamic)
        metadata = {"aot_inductor.metadata": info.to_metadata()}
        aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=metadata)
        os.replace(tmp, path)


def load_pt2(path: str | os.PathLike[str]) -> tuple[Any, ModelInfo]:
    """Load a ``.pt2`` written by :func:`write_pt2`: ``(module to call, ModelInfo)``.

    Raises:
        ValueError: The file is not a ``torch.export`` program, or not one resbackbone exported.
    """
    path = Path(path)
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # not a torch.export archive
        raise ValueError(f"Cannot load {path} as a torch.export program: {str(exc).splitlines()[0]}") from None
    metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    return program.module(), ModelInfo.from_metadata(metadata, source=str(path))
