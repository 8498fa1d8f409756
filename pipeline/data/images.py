"""Encoding, decoding and resizing images into one in-memory uint8 tensor."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DataError


def encode_png(array: np.ndarray) -> bytes:
    """Encode an H×W (grayscale) or H×W×3 uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def open_image(data: bytes, where: str) -> Image.Image:
    """Decode image bytes fully (not just the header), naming `where` on failure."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{where}: cannot decode image (not a format Pillow recognises)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: cannot decode image ({e})") from None
    return img


def is_decodable(data: bytes) -> bool:
    try:
        open_image(data, "")
    except DataError:
        return False
    return True


def is_grayscale(img: Image.Image) -> bool:
    return img.mode in ("1", "L", "I", "I;16", "F", "LA")


def decode_images(blobs: Sequence[bytes], size: int, channels: int | str, names: Sequence[str]) -> np.ndarray:
    """Decode and resize images into one array.

    Args:
        blobs: N encoded images.
        size: Output side length in pixels (bilinear resize when the image differs).
        channels: 1, 3 or "auto" (1 if every image is grayscale, 3 if every image is colour; a mix is an
            error naming the odd images, since converting them is the user's choice).
        names: N names used in error messages (file path or sample id).

    Returns:
        uint8 array of shape (N, C, size, size).
    """
    imgs = [open_image(b, n) for b, n in zip(blobs, names, strict=True)]
    if channels == "auto":
        gray = [is_grayscale(i) for i in imgs]
        if any(gray) and not all(gray):
            odd = [n for n, g in zip(names, gray, strict=True) if g == (sum(gray) < len(gray) / 2)]
            raise DataError(
                f"{odd[0]}: {'grayscale' if sum(gray) < len(gray) / 2 else 'colour'} image among "
                f"{'colour' if sum(gray) < len(gray) / 2 else 'grayscale'} ones ({sum(gray)} grayscale, "
                f"{len(gray) - sum(gray)} colour; first few: {', '.join(odd[:3])}). Set train.channels "
                f"to 3 (or 1) to convert them all"
            )
        channels = 1 if gray and all(gray) else 3
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(imgs), int(channels), size, size), dtype=np.uint8)
    for k, img in enumerate(imgs):
        img = img.convert(mode)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
        out[k] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return out
