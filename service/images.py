"""Image observations as REST clients send them: a PNG or JPEG file, or raw uint8 pixels, base64 in JSON.

Decoded with Pillow (no torch). Everything that can be checked is checked before pixels are decoded:
the base64, the file's format (PNG or JPEG only), and the size its header states, which must be the
model's; a decompression bomb (a small file that states a huge image) is refused by its header, and
the body limit caps what any file may hold. Errors name the field and never echo the input.
"""

from __future__ import annotations

import base64
import binascii
import io
import math

import numpy as np

from reverie.errors import InputError

FORMATS = ("PNG", "JPEG")
MODES = {3: ("RGB", "P"), 1: ("L",)}  # Pillow modes that give the model's channels (a palette is colour)


def _bytes(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(field, "expected base64 (RFC 4648, with padding)") from None


def decode_file(text: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    """base64 of a PNG or JPEG file -> uint8 [H, W, C] of the model's `shape`."""
    from PIL import Image, UnidentifiedImageError

    data = _bytes(text, field)
    height, width, channels = shape
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise InputError(field, "not a PNG or JPEG file") from None
    except Image.DecompressionBombError:  # Pillow's own check of the stated size
        raise InputError(field, f"expected a {height}x{width} image; this file states a huge one (a decompression bomb)") from None
    except (OSError, SyntaxError, ValueError):
        raise InputError(field, "the image could not be decoded (truncated or corrupt)") from None
    with image:
        if image.size != (width, height):
            raise InputError(field, f"expected a {height}x{width} image (height x width), got {image.size[1]}x{image.size[0]}")
        if image.mode not in MODES.get(channels, ()):
            raise InputError(field, f"expected {channels} channel(s) ({' or '.join(MODES.get(channels, ('?',)))}), "
                                    f"got mode {image.mode}")
        try:
            pixels = np.asarray(image.convert(MODES[channels][0]))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # truncated or corrupt data
            raise InputError(field, "the image could not be decoded (truncated or corrupt)") from None
    return pixels.reshape(shape)


def decode_raw(text: str, given_shape: list[int], shape: tuple[int, ...], field: str) -> np.ndarray:
    """base64 of raw uint8 pixels (row-major, `given_shape`) -> uint8 array of the model's `shape`."""
    if list(given_shape) != list(shape):
        raise InputError(f"{field}.shape", f"expected {list(shape)} (the model's observation shape)")
    data = _bytes(text, f"{field}.data")
    if len(data) != math.prod(shape):
        raise InputError(f"{field}.data", f"holds {len(data)} bytes; shape {list(shape)} of uint8 needs {math.prod(shape)}")
    return np.frombuffer(data, np.uint8).reshape(shape)

