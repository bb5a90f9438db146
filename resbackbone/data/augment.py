"""The recipe's ``data.augment`` list: albumentations transforms by name, checked when the recipe is validated.

Each item is ``{name: <albumentations class>, p: 0.5, ...}`` (keyword
arguments of that class); ``OneOf`` and other compositions take a nested
``transforms:`` list. Unknown names and arguments are errors with close
matches; normalisation and tensor conversion are refused, since the loader
adds them from the backbone's weights.

Transforms that resize (``RandomScale``, ``RandomResizedCrop``…) resize masks
with OpenCV's ``INTER_NEAREST_EXACT`` unless the item names its own
``mask_interpolation``: ``INTER_NEAREST``, albumentations' default, samples
without pixel centres and moves the mask by up to half a pixel against the
bilinearly resized image (down and right, at any scale).
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["mask_resize_interpolation", "validate_augment"]

# Normalisation and tensor conversion come from the backbone's weights and the loader.
_FORBIDDEN = {"Normalize", "ToTensorV2", "ToFloat", "FromFloat"}
# Transforms whose masks go through cv2.resize (warps map pixels alike for image and mask, and keep the default)
_RESIZING = {
    "Resize", "LongestMaxSize", "SmallestMaxSize", "RandomScale", "RandomResizedCrop", "RandomSizedCrop",
    "RandomSizedBBoxSafeCrop", "CropAndPad", "Mosaic",
}  # fmt: skip
_ABSTRACT = {"BasicTransform", "DualTransform", "ImageOnlyTransform", "BaseCompose", "Transform3D"}


def _transform_names() -> list[str]:
    import albumentations as A

    names = []
    for name in dir(A):
        obj = getattr(A, name)
        if name in _ABSTRACT or name.startswith("_"):
            continue
        if inspect.isclass(obj) and issubclass(obj, (A.BasicTransform, A.BaseCompose)):
            names.append(name)
    return names


def _image_target() -> object:
    from albumentations.core.type_definitions import Targets

    return Targets.IMAGE


def _close(name: str, choices: list[str]) -> str:
    lower = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)
    matches += [c for c in lower if c not in matches and (c.startswith(name.lower()) or name.lower().startswith(c))]
    matches = matches[:3]
    return ", ".join(repr(lower[m]) for m in matches) if matches else "none"


def _build_one(spec: Any, where: str) -> A.BasicTransform | A.BaseCompose:
    import albumentations as A

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"{where} must be a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}; got {spec!r}"
        )
    kwargs = dict(spec)
    name = kwargs.pop("name")
    names = _transform_names()
    if name in _FORBIDDEN:
        raise ValueError(
            f"{where}: {name} is added by the loader (normalisation comes from the backbone's weights); remove it"
        )
    if name not in names:
        raise ValueError(
            f"Unknown augmentation {name!r} in {where}. Close matches: {_close(name, names)}. "
            "Names are albumentations transform classes, e.g. HorizontalFlip, RandomBrightnessContrast."
        )
    cls = getattr(A, name)
    targets = getattr(cls, "_targets", None)
    if targets is not None and not issubclass(cls, A.BaseCompose) and _image_target() not in targets:
        raise ValueError(f"{where}: {name} works on volumes, not on 2-D images; pick a 2-D transform")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [p for p in params if p != "self"]
        for key in kwargs:
            if key not in accepted:
                raise ValueError(
                    f"{where}: {name} has no argument {key!r}. Close matches: {_close(key, accepted)}. "
                    f"Its arguments: {', '.join(accepted)}."
                )
    if name in _RESIZING:
        kwargs.setdefault("mask_interpolation", mask_resize_interpolation())
    if issubclass(cls, A.BaseCompose):
        children = kwargs.get("transforms")
        if not isinstance(children, list) or not children:
            raise ValueError(f"{where}: {name} needs a non-empty 'transforms' list of augmentations")
        kwargs["transforms"] = [_build_one(c, f"{where}.transforms[{i}]") for i, c in enumerate(children)]
    try:
        return cls(**kwargs)
    except Exception as exc:  # albumentations validates its arguments with pydantic
        raise ValueError(f"{where}: {name}({_fmt(kwargs)}) is invalid: {exc}") from None


def mask_resize_interpolation() -> int:
    """OpenCV's nearest neighbour with pixel centres, as bilinear resizing of the image samples them."""
    import cv2

    return cv2.INTER_NEAREST_EXACT


def _fmt(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "transforms")


def validate_augment(augment: list[dict[str, Any]]) -> list[A.BasicTransform | A.BaseCompose]:
    """Build the recipe's augmentation list, checking names and arguments.

    Args:
        augment: Items ``{name: "HorizontalFlip", p: 0.5, ...}``.

    Returns:
        The albumentations transforms, in order.

    Raises:
        ValueError: An unknown transform or argument (close matches suggested),
            an invalid argument value, or a transform the loader adds itself.

    Example:
        >>> validate_augment([{"name": "HorizontalFlip", "p": 0.5}])
        [HorizontalFlip(p=0.5)]
    """
    return [_build_one(spec, f"data.augment[{i}]") for i, spec in enumerate(augment)]
