"""Reading images and masks: 8/16-bit, grayscale, RGB, RGBA, palette, and DICOM (optional).

Images come back as ``(H, W, C)`` arrays, ``uint8`` for 8-bit files and
``float32`` in [0, 1] for deeper ones (16-bit scaled by 65535, DICOM through
its window), with ``C == in_chans``: grayscale is replicated to 3 channels,
RGBA loses its alpha, RGB becomes luminance for ``in_chans=1``. A recipe's
``data.intensity_percentiles`` stretches each image's own contrast first
(:func:`stretch_percentiles`), as microscopy pipelines do. Every failure
(missing, empty, truncated or non-image file) is a :class:`DataError` naming
the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .problems import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "apply_window",
    "decode_image",
    "probe_image",
    "read_image",
    "read_mask",
    "stretch_percentiles",
    "to_channels",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dcm")
_MEDICAL_HINT = "pip install 'resbackbone[medical]'"
_PERCENTILE_SAMPLE = 1 << 18  # pixels the percentiles are estimated from (an even grid over larger images)


def _open_checked(path: Path):  # type: ignore[no-untyped-def]
    """Open and fully decode ``path`` with PIL, turning every failure into a DataError.

    Returns:
        ``(image, deep)``: the loaded PIL image, and whether the file stores 16 bits per colour sample.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found", path) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})", path) from None
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes); replace it or remove it from the split", path)
    try:
        im = Image.open(path)
        deep = _is_deep(im)  # the tile list is gone after load()
        im.load()
    except UnidentifiedImageError:
        with open(path, "rb") as f:
            head = f.read(8)
        raise DataError(f"{path}: not an image file that can be read (starts with {head!r})", path) from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: refused, too many pixels ({exc})", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: image is truncated or corrupt ({exc}); re-export or remove it", path) from None
    return im, deep


def _is_deep(im) -> bool:  # type: ignore[no-untyped-def]
    return any(";16" in str(getattr(t, "args", "")) for t in getattr(im, "tile", None) or ())


def decode_image(path: str | Path, *, window: tuple[float, float] | None = None) -> tuple[np.ndarray, str]:
    """Decode an image file to its native channels.

    Args:
        path: Image file (any format PIL reads, or ``.dcm``).
        window: DICOM ``(center, width)`` overriding the file's own window.

    Returns:
        ``(array, kind)``: ``array`` is ``(H, W, C)`` with C in 1, 3, 4, uint8 or
        float32 in [0, 1]; ``kind`` describes the source, e.g. ``"8-bit RGB"``,
        ``"16-bit grayscale"``, ``"8-bit RGBA"``.

    Raises:
        DataError: The file is missing, empty, truncated or not an image.
        ImportError: A ``.dcm`` file without pydicom installed.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return _read_dicom(path, window), "DICOM"
    im, deep = _open_checked(path)
    mode = im.mode
    if mode in ("RGB", "RGBA") and deep:
        import cv2

        arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.dtype == np.uint16 and arr.ndim == 3:
            code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
            arr = cv2.cvtColor(arr, code).astype(np.float32) / 65535.0
            return arr, f"16-bit {mode}"
    if mode.startswith("I;16"):
        return (np.asarray(im, dtype=np.float32) / 65535.0)[..., None], "16-bit grayscale"
    if mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if arr.max(initial=0) <= 65535 else 4294967295.0
        bits = "16" if scale == 65535.0 else "32"
        return (np.clip(arr, 0, None) / scale).astype(np.float32)[..., None], f"{bits}-bit grayscale"
    if mode == "F":
        return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)[..., None], "float grayscale"
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None], "8-bit grayscale"
    if mode == "LA":
        return np.asarray(im)[..., :1], "8-bit grayscale+alpha"
    if mode == "RGBA" or (mode == "P" and "transparency" in im.info) or mode == "PA":
        return np.asarray(im.convert("RGBA")), "8-bit RGBA"
    kind = "8-bit RGB" if mode == "RGB" else f"8-bit {mode} (converted to RGB)"
    return np.asarray(im.convert("RGB")), kind


# channels decode_image gives per PIL mode (palette images with transparency become RGBA)
_MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "RGBA": 4, "PA": 4}


def probe_image(path: str | Path) -> tuple[int, str]:
    """The channels :func:`decode_image` will give for ``path`` and what the file is, from its header only.

    Cheap enough to look at every file of a large folder before training:
    pixels are not decoded (a file truncated after its header is found when it is read).

    Returns:
        ``(channels, kind)``, e.g. ``(4, "RGBA")``, ``(1, "I;16")``, ``(1, "DICOM")``.

    Raises:
        DataError: The file is missing, empty or not an image.
        ImportError: A ``.dcm`` file without pydicom installed.
    """
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        try:
            import pydicom
        except ImportError:
            raise ImportError(f"{path} is a DICOM file; reading it needs pydicom: {_MEDICAL_HINT}") from None
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for non-DICOM files
            raise DataError(f"{path}: not a DICOM file that can be read ({exc})", path) from None
        return int(getattr(ds, "SamplesPerPixel", 1) or 1), "DICOM"
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})", path) from None
    if size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)", path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            transparent = "transparency" in im.info
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file that can be read", path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: image header is corrupt ({exc})", path) from None
    if mode.startswith("I;16"):
        return 1, mode
    if mode == "P":
        return (4 if transparent else 3), mode
    return _MODE_CHANNELS.get(mode, 3), mode


def to_channels(arr: np.ndarray, in_chans: int, path: str | Path = "") -> np.ndarray:
    """Bring a decoded ``(H, W, C)`` array to ``in_chans`` channels.

    Grayscale is replicated, an alpha channel (C == 4, or 2) is dropped unless
    ``in_chans`` equals C, RGB becomes luminance (ITU-R 601) for one channel.

    Raises:
        DataError: No sensible conversion (e.g. RGB to 2 channels).
    """
    c = arr.shape[2]
    if c == in_chans:
        return arr
    if c in (2, 4):  # drop alpha
        return to_channels(arr[..., : c - 1], in_chans, path)
    if c == 1:
        return np.repeat(arr, in_chans, axis=2)
    if c == 3 and in_chans == 1:
        gray = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = gray[..., None]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8) if arr.dtype == np.uint8 else out
    raise DataError(f"{path}: image has {c} channels, the model expects in_chans={in_chans}", path)


def read_image(
    path: str | Path,
    *,
    in_chans: int = 3,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] | None = None,
) -> np.ndarray:
    """Read an image as ``(H, W, in_chans)``, uint8 (8-bit files) or float32 in [0, 1].

    Args:
        path: Image file.
        in_chans: Channels the model expects.
        window: DICOM ``(center, width)`` override.
        percentiles: ``(low, high)``: stretch the image's contrast so that these
            percentiles of its pixels become black and white (:func:`stretch_percentiles`).

    Returns:
        The image array.

    Raises:
        DataError: Missing, empty, truncated, non-image file, or impossible channel conversion.

    Example:
        >>> read_image("cells.png").shape  # an RGBA PNG
        (256, 320, 3)
    """
    arr, _ = decode_image(path, window=window)
    if percentiles is not None:
        arr = stretch_percentiles(arr, *percentiles)
    return to_channels(arr, in_chans, path)


def stretch_percentiles(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Per-image contrast stretch: the ``low`` and ``high`` percentiles of the pixels map to 0 and 1.

    The normalisation of microscopy pipelines (CSBDeep and StarDist use 1 and 99.8,
    Cellpose 1 and 99): a dim fluorescence image and a bright one reach the model
    with the same contrast. The percentiles are taken over all colour channels
    together (colour balance is kept; an alpha channel is left as it is and does
    not count) and estimated on an even grid of at most 2**18 pixels, NaN pixels
    left out; values outside are clipped, NaN becomes 0. A flat image (both
    percentiles equal) becomes black. DICOM is stretched after its window.

    Args:
        image: ``(H, W, C)`` uint8, or float in [0, 1].
        low: Lower percentile, in [0, 100).
        high: Upper percentile, in (low, 100].

    Returns:
        The image in the same dtype: uint8 for uint8 input, float32 in [0, 1] otherwise.

    Example:
        >>> dim = np.array([[[10], [20]], [[30], [40]]], np.uint8)
        >>> stretch_percentiles(dim, 0, 100)[..., 0]
        array([[  0,  85],
               [170, 255]], dtype=uint8)
    """
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles ({low}, {high}) must satisfy 0 <= low < high <= 100, e.g. (1, 99.8)")
    if image.ndim != 3:
        raise ValueError(f"stretch_percentiles takes an (H, W, C) image; got shape {image.shape}")
    colour = image[..., :-1] if image.shape[-1] in (2, 4) else image  # alpha carries no intensity
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(np.sqrt(h * w / _PERCENTILE_SAMPLE))))
    sample = colour[::step, ::step].astype(np.float32).ravel()
    sample = sample[~np.isnan(sample)]
    lo, hi = np.percentile(sample, (low, high)) if sample.size else (0.0, 0.0)
    scale = 1.0 / (hi - lo) if hi > lo else 0.0
    out = np.nan_to_num(np.clip((colour.astype(np.float32) - np.float32(lo)) * np.float32(scale), 0.0, 1.0))
    out = np.rint(out * 255.0).astype(np.uint8) if image.dtype == np.uint8 else out
    if colour is not image:  # the alpha channel back, untouched
        out = np.concatenate([out, image[..., -1:].astype(out.dtype)], axis=-1)
    return out


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as an ``(H, W)`` integer array of its raw pixel values.

    Palette PNGs give their palette indices; 16-bit masks their 16-bit values;
    an RGB(A) mask is accepted only when its colour channels are equal.

    Raises:
        DataError: Unreadable file, or a colour mask with differing channels.
    """
    path = Path(path)
    im, _ = _open_checked(path)
    mode = im.mode
    if mode in ("P", "L"):
        return np.asarray(im)
    if mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if mode.startswith("I"):
        return np.asarray(im).astype(np.int32)
    arr = np.asarray(im.convert("RGB") if mode not in ("RGB", "RGBA", "LA") else im)
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        if colour.shape[2] == 3 and not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise DataError(
                f"{path}: mask is a colour ({mode}) image; save masks as single-channel index PNGs "
                "(mode L or P, one value per class)",
                path,
            )
        return colour[..., 0]
    return arr


def apply_window(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear window (PS3.3 C.11.2.1.2) mapping values to float32 [0, 1].

    Example:
        >>> apply_window(np.array([-1000.0, 40.0, 1000.0]), 40, 400).round(2)
        array([0. , 0.5, 1. ], dtype=float32)
    """
    span = max(float(width) - 1.0, 1e-6)
    lo = center - 0.5 - span / 2
    out = (arr.astype(np.float64) - (center - 0.5)) / span + 0.5
    out = np.where(arr <= lo, 0.0, out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _first(value: object) -> float:
    try:
        return float(value[0])  # type: ignore[index]  # MultiValue
    except TypeError:
        return float(value)  # type: ignore[arg-type]


def _read_dicom(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise ImportError(f"{path} is a DICOM file; reading it needs pydicom: {_MEDICAL_HINT}") from None
    if not path.is_file():
        raise DataError(f"{path}: file not found", path)
    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise DataError(f"{path}: DICOM file cannot be decoded ({exc})", path) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):  # colour DICOM
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        return (pixels.astype(np.float32) / float(2**bits - 1)).clip(0, 1)
    if pixels.ndim != 2:
        raise DataError(
            f"{path}: DICOM pixel data has shape {pixels.shape}; only single 2-D frames are supported", path
        )
    values = pixels.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    if window is not None:
        center, width = window
    elif getattr(ds, "WindowCenter", None) is not None and getattr(ds, "WindowWidth", None) is not None:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    else:
        lo, hi = float(values.min()), float(values.max())
        center, width = (lo + hi) / 2, max(hi - lo, 1.0)
    out = apply_window(values, center, width)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return out[..., None]
