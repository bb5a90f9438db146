"""The backbone file: ``backbone.safetensors`` and ``backbone.json``, written by pretraining and by export.

The safetensors file holds the backbone's state dict (keys as
:class:`~resbackbone.Backbone` names them) and, in its header, the record; the
JSON beside it holds the same :class:`~resbackbone.weights.BackboneRecord`
(architecture, ``in_chans``, mean/std, how it was trained) plus the file's
sha256, tensor and parameter counts. ``model.backbone_weights:`` and
``create_backbone(weights=...)`` take the file (or its folder) directly and
normalise with its mean/std. Both files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..backbone import Backbone, backbone_for_record
from ..engine.checkpoint import atomic_write_bytes
from ..weights import BackboneRecord, LoadReport, read_backbone_file, run_file
from ..weights.records import METADATA_KEY

__all__ = ["BACKBONE_FILE", "export_backbone", "write_backbone"]

BACKBONE_FILE = "backbone.safetensors"
"""The weights file's name in an output folder (its record: ``backbone.json``)."""


def write_backbone(backbone: Backbone, record: BackboneRecord, folder: str | os.PathLike[str]) -> Path:
    """Write ``backbone`` and its ``record`` as ``folder/backbone.safetensors`` + ``folder/backbone.json``.

    Returns:
        The safetensors file.
    """
    from safetensors.torch import save

    folder = Path(folder)
    state = {k: v.detach().to("cpu").contiguous() for k, v in backbone.state_dict().items()}
    meta = record.to_json()
    data = save(state, metadata={METADATA_KEY: json.dumps(meta)})
    path = folder / BACKBONE_FILE
    atomic_write_bytes(path, data)
    meta["file"] = {
        "name": BACKBONE_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "tensors": len(state),
        "parameters": sum(p.numel() for p in backbone.parameters()),
    }
    atomic_write_bytes(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def export_backbone(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[Path, LoadReport]:
    """Write the backbone of a run (or of a run's checkpoint) alone, without its head and optimiser.

    Args:
        source: A run folder (its ``backbone.safetensors``, else ``best.pt``, else
            ``last.pt``), a ``best.pt``/``last.pt`` of ``resbackbone finetune`` or
            ``resbackbone pretrain``, or an exported ``backbone.safetensors``.
        out: The folder to write ``backbone.safetensors`` and ``backbone.json`` into.

    Returns:
        ``(the safetensors file, the load report of the backbone taken out of the checkpoint)``.

    Raises:
        ValueError: ``source`` is missing, is a folder without a run's files, or
            records no backbone (a plain state dict: load it with
            ``create_backbone(name, weights=file)`` and use :func:`write_backbone`).
    """
    path = Path(source)
    if path.is_dir():
        path = run_file(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist: pass a run folder, its best.pt or last.pt, or a backbone file.")
    _, record = read_backbone_file(path)
    if record is None:
        raise ValueError(
            f"{path} records no backbone (not a resbackbone run checkpoint nor an exported backbone), so its "
            "architecture is unknown. Load it with create_backbone(NAME, weights=FILE) and write it with "
            "resbackbone.pretrain.write_backbone()."
        )
    backbone = backbone_for_record(record)
    report = backbone.load_weights(path)
    origin = {**record.origin, "exported_from": str(path)}
    exported = BackboneRecord(record.architecture, record.in_chans, backbone.mean, backbone.std, origin)
    return write_backbone(backbone, exported, out), report
