"""Unlabeled image folders and pretraining recipes for the pretraining tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from resbackbone.pretrain import PretrainRecipe, load_pretrain_recipe


def blobs(i: int, size: int = 48, channels: int = 3) -> np.ndarray:
    """A textured uint8 image: a few bright discs of varying colour on a dark noisy background."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[:size, :size]
    image = rng.integers(0, 40, (size, size, channels)).astype(np.float64)
    for _ in range(3):
        cy, cx, r = rng.integers(6, size - 6), rng.integers(6, size - 6), rng.integers(3, 9)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(120, 255, channels)
    return image.astype(np.uint8)


def write_images(folder: Path, n: int = 8, *, size: int = 48, mode: str = "RGB") -> Path:
    """``n`` PNG images in ``folder``: ``RGB``, ``RGBA``, ``L`` or ``I;16`` (16-bit grayscale)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if mode == "I;16":
            Image.fromarray(blobs(i, size, 1)[..., 0].astype(np.uint16) * 257).save(folder / f"im{i}.png")
        elif mode == "L":
            Image.fromarray(blobs(i, size, 1)[..., 0]).save(folder / f"im{i}.png")
        else:
            Image.fromarray(blobs(i, size, len(mode))).save(folder / f"im{i}.png")
    return folder


def tiny_recipe(tmp_path: Path, *overrides: str, method: str = "simclr", folder: Path | None = None) -> PretrainRecipe:
    """A pretraining recipe that runs in a second: test_resnet, 32 px views, 2 steps of 4 images."""
    path = tmp_path / "pretrain.yaml"
    images = folder or write_images(tmp_path / "images")
    path.write_text(
        f"""
name: tiny_pretrain
model: {{backbone: test_resnet}}
pretrain:
  method: {method}
  images: [{{folder: {images}}}]
  views: {{resize: 48, crop_size: 32}}
optim: {{optimizer: adamw, lr: 0.003, epochs: 1, batch_size: 4}}
run: {{output: {tmp_path / "run"}, workers: 0, device: cpu, seed: 0}}
"""
    )
    return load_pretrain_recipe(path, overrides=list(overrides))
