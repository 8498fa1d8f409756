"""Encoding, decoding and resizing images into one in-memory uint8 tensor."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import DataError


def encode_png(array: np.ndarray) -> bytes:
    """Encode an H×W (grayscale) or H×W×3 uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


WIDE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
"""Pillow modes with more than 8 bits per pixel (16-bit PNG/TIFF, 32-bit int or float TIFF): converting
them to 8 bits clips (16-bit values 0-65535 become 0-255 saturated) or zeroes them, so they are refused."""


def _check_mode(img: Image.Image, where: str) -> None:
    if img.mode in WIDE_MODES:
        raise DataError(
            f"{where}: {img.mode} pixels (16-bit or float) are not 8-bit; gradclean would clip them. Convert "
            "the image to 8-bit (e.g. Pillow: img.point(lambda v: v / 256).convert('L')) first"
        )


def open_image(data: bytes, where: str) -> Image.Image:
    """Decode image bytes fully (not just the header), naming `where` on failure; images above Pillow's
    pixel limit (decompression bombs) and 16-bit / float images are refused."""
    try:
        img = Image.open(io.BytesIO(data))
        _check_mode(img, where)
        img.load()
    except UnidentifiedImageError:
        raise DataError(f"{where}: cannot decode image (not a format Pillow recognises)") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{where}: refused, too many pixels for an image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: cannot decode image ({e})") from None
    return img


def is_decodable(data: bytes) -> bool:
    try:
        open_image(data, "")
    except DataError:
        return False
    return True


def opens_as_image(path: str) -> bool:
    """Whether a file's header reads as an image (no pixel decode: cheap enough for every streamed file)."""
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


def is_grayscale(img: Image.Image) -> bool:
    return img.mode in ("1", "L", "I", "I;16", "F", "LA")


def check_modes(gray: Sequence[bool], names: Sequence[str]) -> int:
    """The channel count `channels: auto` resolves to: 1 if every image is grayscale, 3 if every image is
    colour; a mix raises DataError naming the odd images (converting them is the user's choice)."""
    n_gray = sum(gray)
    if 0 < n_gray < len(gray):
        minority_gray = n_gray < len(gray) / 2
        odd = [n for n, g in zip(names, gray, strict=True) if g == minority_gray]
        raise DataError(
            f"{odd[0]}: {'grayscale' if minority_gray else 'colour'} image among "
            f"{'colour' if minority_gray else 'grayscale'} ones ({n_gray} grayscale, {len(gray) - n_gray} "
            f"colour; first few: {', '.join(odd[:3])}). Set train.channels to 3 (or 1) to convert them all"
        )
    return 1 if gray and n_gray == len(gray) else 3


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded image as a (C, size, size) uint8 array: converted to L/RGB, bilinear-resized if needed."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_file(path: str, size: int, channels: int) -> np.ndarray:
    """Read, decode and resize one image file to (C, size, size) uint8; errors name the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e.strerror or e})") from None
    return to_array(open_image(data, path), size, channels)


def file_is_grayscale(path: str) -> bool:
    """Whether an image file is grayscale, from its header only (no pixel decode)."""
    try:
        with Image.open(path) as img:
            _check_mode(img, path)
            return is_grayscale(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot open image ({e})") from None


def decode_images(blobs: Sequence[bytes], size: int, channels: int | str, names: Sequence[str]) -> np.ndarray:
    """Decode and resize images into one array.

    Args:
        blobs: N encoded images.
        size: Output side length in pixels (bilinear resize when the image differs).
        channels: 1, 3 or "auto" (see `check_modes`).
        names: N names used in error messages (file path or sample id).

    Returns:
        uint8 array of shape (N, C, size, size).
    """
    imgs = [open_image(b, n) for b, n in zip(blobs, names, strict=True)]
    if channels == "auto":
        channels = check_modes([is_grayscale(i) for i in imgs], names)
    out = np.empty((len(imgs), int(channels), size, size), dtype=np.uint8)
    for k, img in enumerate(imgs):
        out[k] = to_array(img, size, int(channels))
    return out
