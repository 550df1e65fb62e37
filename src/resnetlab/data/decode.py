"""One image file to an RGB uint8 tensor, or a ``DataError`` saying why it cannot be.

PIL decodes everything: it knows the odd modes (palette, alpha, 16-bit, CMYK) and EXIF
orientation. torchvision.io's decoders are deprecated since torchvision 0.29, and on a
32x32 JPEG they save only about 60 microseconds, once per image when the data is cached.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError, ImageTooLarge, NotAnImage

_JPEG_END = b"\xff\xd9"
# Writers sometimes append padding or metadata after the end marker; look this far back for it.
_JPEG_TAIL = 1024
# Transparent pixels are shown on white, as a browser or image viewer would show them.
_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Errors PIL raises for files it cannot parse or that end early.
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
               Image.DecompressionBombError)


def decode_image_file(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as a 3xHxW uint8 RGB tensor, EXIF orientation applied."""
    return decode_image_bytes(_read(path), str(path))


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = None) -> torch.Tensor:
    """An encoded image (``name`` says which, in errors) as a 3xHxW uint8 RGB tensor.

    ``max_pixels`` bounds width x height before anything is decoded: a small file that
    unpacks to gigabytes (a decompression bomb) raises ``ImageTooLarge`` instead.
    Bytes no decoder recognises raise ``NotAnImage``; a damaged image, ``DataError``.
    """
    if not data:
        raise DataError(f"{name} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # read from the header: nothing is decoded yet
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"{name} is {width}x{height} = {width * height:,} pixels; "
                                    f"at most {max_pixels:,} are accepted")
            image.load()  # PIL decodes lazily; a truncated file fails only here
            return _to_rgb_tensor(ImageOps.exif_transpose(image))
    except Image.DecompressionBombError as error:  # PIL's own bound, for callers that set none
        raise ImageTooLarge(f"{name} is too large to decode: {_first_line(error)}") from error
    except UnidentifiedImageError as error:
        raise NotAnImage(f"{name} is not a readable image: {_first_line(error)}") from error
    except _PIL_ERRORS as error:
        raise DataError(f"{name} is not a readable image: {_first_line(error)}") from error


def check_image_file(path: str | os.PathLike) -> tuple[int, int]:
    """Cheaply verify that ``path`` is a whole image and return its (height, width) as stored.

    Reads the header and the last KiB only, so a large dataset can be checked up front:
    empty files, non-images and files cut short (no end marker) are caught before training.
    A JPEG whose end marker is not near the end is decoded in full to be sure.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{path} is empty (0 bytes)")
        with open(path, "rb") as file:
            with Image.open(file) as image:
                width, height = image.size
                kind = image.format
            file.seek(max(0, size - _JPEG_TAIL))
            tail = file.read()
    except _PIL_ERRORS as error:
        raise DataError(f"{path} is not a readable image: {_first_line(error)}") from error
    if kind == "JPEG" and _JPEG_END not in tail:
        decode_image_file(path)
    elif kind == "PNG" and b"IEND" not in tail:
        raise DataError(f"{path} is a truncated PNG: it has no IEND chunk")
    return height, width


def _read(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise DataError(f"{path} cannot be read: {error.strerror or error}") from error


def _to_rgb_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 (a white image); scale the range instead.
        values = np.asarray(image, dtype=np.int64).clip(0, 65535)
        gray = torch.from_numpy(((values + 128) // 257).astype(np.uint8))
        return gray.expand(3, *gray.shape).contiguous()
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (*_BACKGROUND, 255)), rgba)
    rgb = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def _first_line(error: Exception) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "unknown format, or not an image at all"  # PIL's own message repeats the file name
    # PIL names the in-memory buffer it read from ("<_io.BytesIO object at 0x7f...>"): noise.
    text = re.sub(r"<_io\.\w+ object at 0x[0-9a-f]+>", "the file", str(error).strip())
    return text.splitlines()[0] if text else type(error).__name__
