"""Checks on client input, shared by every front end: each failure names the field it is about.

JSON arrives as nested lists; a boolean or a string is not a number, NaN and infinity are not
observations, and a value that overflows float32 would silently become infinity in the graph.
Messages never echo the offending value back.
"""

from __future__ import annotations

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
    from . import images  # Pillow, imported when the first image arrives

    if isinstance(item, EncodedImage):
        return images.decode_file(item.image, tuple(space.shape), f"{field}.image")
    return images.decode_raw(item.data, item.shape, tuple(space.shape), field)


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
