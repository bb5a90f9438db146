"""Prediction with a trained checkpoint on image files: boxes or masks, and overlays."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.images import IMAGE_EXTENSIONS
from ..deprecation import moved_names
from . import evaluate
from .builders import build_predictor, find_backbone, input_normalization
from .checkpoint import atomic_write_bytes, load_model
from .distributed import pick_device

__all__ = ["predict"]


def _collect(images: Sequence[str | os.PathLike[str]]) -> list[Path]:
    found: list[Path] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{item}: no such image file or folder.")
    if not found:
        looked = ", ".join(IMAGE_EXTENSIONS)
        raise ValueError(f"No images found in {', '.join(map(str, images))} (looked for {looked}).")
    return found


@torch.no_grad()
def predict(
    checkpoint: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    score_thresh: float = 0.5,
    overlays: bool = True,
    progress: bool = True,
) -> Path:
    """Run a checkpoint over image files; write ``predictions.jsonl`` and overlay PNGs to ``out_dir``.

    Each line of ``predictions.jsonl`` holds the image path and, for detection,
    ``boxes`` (xyxy in the original image's pixels), ``scores`` and ``labels``
    (class names); for segmentation, the path of the class-index mask PNG
    written beside it and the pixel count per class. Results are written as
    they come, so a long run keeps memory flat and loses nothing done. The model
    runs as the checkpoint's recipe says (``eval.sliding_window`` / ``eval.tiles``,
    ``eval.tta``), and predictions come back at each file's resolution.

    Returns:
        The path of ``predictions.jsonl``.
    """
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from ..data import build_transforms, image_to_tensor, read_image
    from .overlays import as_rgb, draw_overlay

    dev = pick_device(device)
    model, recipe, classes = load_model(checkpoint, device=dev)
    backbone = find_backbone(model)
    mean, std = input_normalization(backbone, recipe.task)
    transform = build_transforms(recipe.data, task=recipe.task, train=False, pad=False)
    run_model = build_predictor(model, recipe, mean=mean, std=std)  # windows/tiles/TTA; answers at the file's size
    detection = recipe.task == "detection"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _collect(images)
    results = out / "predictions.jsonl"
    with open(results, "w") as log:
        for path in tqdm(files, desc="predict", disable=not progress):
            pixels = read_image(path, in_chans=backbone.in_chans, window=recipe.data.window)
            h, w = pixels.shape[:2]
            extra = {"bboxes": np.zeros((0, 4)), "labels": []} if detection else {}
            tensor = image_to_tensor(transform(image=pixels, **extra)["image"], mean, std)
            output = run_model([tensor.to(dev)], [(h, w)])[0]
            record: dict[str, Any] = {"image": str(path), "size": [h, w]}
            if detection:
                keep = output["scores"] >= score_thresh
                boxes = output["boxes"][keep].cpu()
                record |= {
                    "boxes": [[round(v, 2) for v in box] for box in boxes.tolist()],
                    "scores": [round(float(s), 4) for s in output["scores"][keep]],
                    "labels": [classes[int(lb) - 1] for lb in output["labels"][keep]],
                }
                drawn: Any = output
            else:
                mask = output.argmax(0).to(torch.uint8).cpu().numpy()
                buffer = io.BytesIO()
                Image.fromarray(mask).save(buffer, format="PNG")
                mask_path = out / f"{path.stem}_mask.png"
                atomic_write_bytes(mask_path, buffer.getvalue())
                counts = np.bincount(mask.ravel(), minlength=len(classes))
                record |= {"mask": str(mask_path), "pixels": {c: int(n) for c, n in zip(classes, counts)}}
                drawn = mask
            if overlays:
                picture = draw_overlay(
                    as_rgb(pixels), drawn, task=recipe.task, classes=classes, title=path.name, score_thresh=score_thresh
                )
                buffer = io.BytesIO()
                Image.fromarray(picture).save(buffer, format="PNG")
                atomic_write_bytes(out / f"{path.stem}_overlay.png", buffer.getvalue())
            log.write(json.dumps(record) + "\n")
            log.flush()
    return results


__getattr__ = moved_names(__name__, {"evaluate_checkpoint": evaluate})
