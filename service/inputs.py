"""Checks on client input, shared by every front end: each failure names the field it is about.

JSON arrives as nested lists; a boolean or a string is not a number, NaN and infinity are not
observations, and a value that overflows float32 would silently become infinity in the graph.
Messages never echo the offending value back.

Image observations arrive as a PNG or JPEG file or as raw uint8 pixels, base64 in JSON, decoded with
Pillow (no torch; imported when the first image arrives). Everything that can be checked is checked
before pixels are decoded: the base64, the file's format (PNG or JPEG only), and the size its header
states, which must be the model's; a decompression bomb (a small file that states a huge image) is
refused by its header, and the body limit caps what any file may hold.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re

import numpy as np

from reverie.actions import ActionCoding
from reverie.bundle import ActionSpace, ObservationSpace
from reverie.errors import InputError

from .schemas import EncodedImage, RawImage

FLOAT32_MAX = float(np.finfo(np.float32).max)
# One number in a comma-separated query observation: plain decimal notation, bounded so that
# anything it matches fits float32 (no nan, inf, underscores or 1e99).
NUMBER_PATTERN = r"[-+]?(\d{1,20}(\.\d{0,20})?|\.\d{1,20})([eE](-\d{1,2}|\+?\d))?"
_NUMBER = re.compile(NUMBER_PATTERN)


def _index(field: str, index: tuple[int, ...]) -> str:
    return field + "".join(f"[{i}]" for i in index)


def _numbers(value, shape: tuple[int, ...], field: str, path: tuple[int, ...] = ()) -> None:
    """Check that `value` is nested lists of exactly `shape` holding only ints and floats."""
    if not isinstance(value, (list, tuple)):
        raise InputError(_index(field, path), f"expected an array of shape {list(shape)}")
    if len(value) != shape[0]:
        raise InputError(_index(field, path), f"expected {shape[0]} elements, got {len(value)}")
    if len(shape) == 1:
        for i, x in enumerate(value):
            if type(x) is not float and type(x) is not int:  # bool is a subclass of int: excluded here
                kind = "a boolean" if isinstance(x, bool) else "a string" if isinstance(x, str) else type(x).__name__
                raise InputError(_index(field, path + (i,)), f"expected a number, got {kind}")
        return
    for i, item in enumerate(value):
        _numbers(item, shape[1:], field, path + (i,))


def check_finite(array: np.ndarray, field: str) -> np.ndarray:
    """Numbers -> float32 array, refusing NaN, infinity and values beyond float32's range."""
    largest = np.abs(array).max() if array.size else 0.0
    if not largest <= FLOAT32_MAX:  # one reduction on the good path; NaN, inf and overflow all fail it
        if not np.isfinite(array).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise InputError(_index(field, where), "must be a finite number (NaN and infinity are not allowed)")
        where = tuple(int(i) for i in np.argwhere(np.abs(array) > FLOAT32_MAX)[0])
        raise InputError(_index(field, where), "overflows float32")
    return array.astype(np.float32, copy=False)


def observation_batch(value, space: ObservationSpace, field: str, batched: bool) -> np.ndarray:
    """JSON: one observation (or a non-empty list of them when `batched`) -> float32 batch [B, *shape].

    An observation is nested lists of numbers, or for an image model (dtype uint8) an image form
    (`schemas.EncodedImage`, `schemas.RawImage`), decoded by `images`."""
    shape = tuple(space.shape)
    if not batched:
        if isinstance(value, (EncodedImage, RawImage)):
            return _image(value, space, field)[None].astype(np.float32)
        _numbers(value, shape, field)
        return _within_space(np.asarray(value, dtype=np.float64), space, field)[None]
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise InputError(field, "expected a non-empty list of observations")
    if any(isinstance(item, (EncodedImage, RawImage)) for item in value):
        return np.stack([_image(item, space, f"{field}[{i}]") for i, item in enumerate(value)]).astype(np.float32)
    for i, item in enumerate(value):
        _numbers(item, shape, f"{field}[{i}]")
    return _within_space(np.asarray(value, dtype=np.float64), space, field)


def _image(item, space: ObservationSpace, field: str) -> np.ndarray:
    """One observation of an image model, in any form -> uint8 [H, W, C]."""
    if not isinstance(item, (EncodedImage, RawImage)):
        _numbers(item, tuple(space.shape), field)
        return _within_space(np.asarray(item, dtype=np.float64), space, field).astype(np.uint8)
    if space.dtype != "uint8" or len(space.shape) != 3:
        raise InputError(field, f"this model takes vector observations of shape {list(space.shape)}, not images")
    if isinstance(item, EncodedImage):
        return decode_file(item.image, tuple(space.shape), f"{field}.image")
    return decode_raw(item.data, item.shape, tuple(space.shape), field)


def check_observation_array(array: np.ndarray, space: ObservationSpace, field: str) -> np.ndarray:
    """An already-decoded tensor (raw bytes over gRPC): one observation or a batch -> float32 batch."""
    shape = tuple(space.shape)
    if tuple(array.shape) == shape:
        return _within_space(array, space, field)[None]
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise InputError(field, f"expected shape {list(shape)} or [batch, {', '.join(map(str, shape))}], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise InputError(field, "empty batch")
    return _within_space(array, space, field)


def _within_space(array: np.ndarray, space: ObservationSpace, field: str) -> np.ndarray:
    array = check_finite(array, field)
    if space.dtype == "uint8" and ((array < 0).any() or (array > 255).any()):
        raise InputError(field, "image observations hold values in [0, 255]")
    return array


def csv_observation(text: str, field: str = "obs") -> list[float]:
    """'0.1,-2,3e-4' -> floats, each checked against NUMBER_PATTERN (the query form of an observation)."""
    values = []
    for i, item in enumerate(text.split(",")):
        if not _NUMBER.fullmatch(item):
            raise InputError(f"{field}[{i}]", "expected a decimal number such as -0.25 or 1.5e-3")
        values.append(float(item))
    return values


def check_batch_size(size: int, field: str, max_batch: int) -> None:
    if size > max_batch:
        raise InputError(field, f"at most {max_batch} observations per request")


def check_range(field: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InputError(field, f"must be between {low} and {high}")
    return value


def plan(value, space: ActionSpace, field: str = "actions") -> np.ndarray:
    """A client's action plan in env form -> agent actions [H] (indices) or [H, dim] in [-1, 1]."""
    if not isinstance(value, (list, tuple)) or len(value) == 0:
        raise InputError(field, "expected a non-empty list of actions")
    return np.stack([action(a, space, f"{field}[{i}]") for i, a in enumerate(value)])


def action(value, space: ActionSpace, field: str) -> np.ndarray:
    """One action in env form -> the agent's: an index, or a vector in [-1, 1]."""
    if space.kind == "discrete":
        value = int(value) if type(value) is float and value.is_integer() else value  # 1.0 is an integer in JSON
        if type(value) is not int:
            raise InputError(field, f"expected an integer action in [0, {space.n - 1}]")
        if not 0 <= value < space.n:
            raise InputError(field, f"action out of range [0, {space.n - 1}]")
        return np.asarray(value, dtype=np.int64)
    _numbers(value, (space.shape[0],), field)
    vector = check_finite(np.asarray(value, dtype=np.float64), field)
    coding = ActionCoding(False, space.low, space.high)
    outside = (vector < coding.low) | (vector > coding.high)
    if outside.any():
        j = int(np.argmax(outside))
        raise InputError(f"{field}[{j}]", f"outside the action bounds [{coding.low[j]}, {coding.high[j]}]")
    return coding.from_env(vector)


# ---------------------------------------------------------------- image forms
IMAGE_FORMATS = ("PNG", "JPEG")
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
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
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

