"""One record of experience: a fragment of an episode, and its byte form in the log.

The byte form is a small JSON header followed by each array's raw little-endian bytes, so a
payload decodes with nothing but numpy and never runs code from the wire (no pickle).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np
import orjson

EPISODE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_FORMAT = 1
_HEADER_LENGTH = struct.Struct("<I")
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in ("float32", "uint8", "int64")}
# dtype -> (its name, its little-endian form), keyed by the dtype itself: `dtype.name` is computed in
# Python each time it is read, and a fragment is checked and encoded on every reported step.
_FORMS = {dtype: (name, little) for name, little in _DTYPES.items() for dtype in (little, little.newbyteorder(">"))}
# The arrays in payload order, with the dtypes each may have: actions are int64 [n] (discrete)
# or float32 [n, dim] (box, scaled to [-1, 1]): the agent's form, as the replay holds them.
_ARRAYS = {
    "observations": ("float32", "uint8"),
    "actions": ("int64", "float32"),
    "rewards": ("float32",),
    "model_versions": ("int64",),
}


@dataclass(frozen=True, eq=False)
class Fragment:
    """Consecutive steps of one episode as a client played them.

    `episode` and `index` name the fragment so a retried upload is stored once; the arrays keep
    the env's own forms, since the service validates them against the env's spaces, not this."""

    episode: str
    index: int
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    model_versions: np.ndarray
    terminated: bool
    truncated: bool
    source: str = ""
    evaluation: bool = False  # played by an evaluation session: one model version, deterministic, for its return

    def __post_init__(self) -> None:
        _check(self)

    @property
    def steps(self) -> int:
        return len(self.rewards)

    @property
    def key(self) -> bytes:
        """The dedup key: one episode's fragment indices never repeat."""
        return f"{self.episode}\x00{self.index}".encode()


def _check(fragment: Fragment) -> None:
    """Internal consistency only: every malformed fragment fails here, whether built or decoded."""
    if not isinstance(fragment.episode, str) or not EPISODE.fullmatch(fragment.episode):
        raise ValueError(f"episode must be 1-128 characters of [A-Za-z0-9._:-], got {fragment.episode!r}")
    if not isinstance(fragment.index, int) or isinstance(fragment.index, bool) or fragment.index < 0:
        raise ValueError(f"index must be an int >= 0, got {fragment.index!r}")
    for flag in ("terminated", "truncated", "evaluation"):
        if not isinstance(getattr(fragment, flag), bool):
            raise ValueError(f"{flag} must be a bool, got {getattr(fragment, flag)!r}")
    if not isinstance(fragment.source, str):
        raise ValueError(f"source must be a str, got {fragment.source!r}")
    for name, dtypes in _ARRAYS.items():
        array = getattr(fragment, name)
        if not isinstance(array, np.ndarray) or _FORMS.get(array.dtype, ("",))[0] not in dtypes:
            got = array.dtype.name if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"{name} must be a numpy array of {' or '.join(dtypes)}, got {got}")
    steps = len(fragment.rewards) if fragment.rewards.ndim == 1 else 0
    if steps < 1:
        raise ValueError(f"rewards must have shape [steps >= 1], got {fragment.rewards.shape}")
    if fragment.model_versions.shape != (steps,):
        raise ValueError(f"model_versions must have shape [{steps}], got {fragment.model_versions.shape}")
    actions = fragment.actions
    if actions.shape[:1] != (steps,) or actions.ndim != (1 if actions.dtype == np.int64 else 2):
        raise ValueError(f"actions must be int64 [{steps}] or float32 [{steps}, dim], "
                         f"got {actions.dtype.name} {list(actions.shape)}")
    if fragment.observations.ndim < 1 or len(fragment.observations) != steps + 1:
        raise ValueError(f"observations must have {steps + 1} rows, got shape {fragment.observations.shape}")


def encode(fragment: Fragment) -> bytes:
    """The fragment as a log payload: header length (u32 LE), JSON header, then the arrays."""
    arrays = [getattr(fragment, name) for name in _ARRAYS]
    forms = [_FORMS[array.dtype] for array in arrays]
    arrays = [np.ascontiguousarray(array, dtype=little) for array, (_, little) in zip(arrays, forms)]
    header = {
        "format": _FORMAT,
        "episode": fragment.episode,
        "index": fragment.index,
        "terminated": fragment.terminated,
        "truncated": fragment.truncated,
        "source": fragment.source,
        **({"evaluation": True} if fragment.evaluation else {}),  # optional: records written before it still read
        "arrays": [[name, dtype, list(array.shape)] for name, array, (dtype, _) in zip(_ARRAYS, arrays, forms)],
    }
    head = orjson.dumps(header)  # compact JSON, as json.dumps with tight separators writes it, ~40x faster
    return b"".join([_HEADER_LENGTH.pack(len(head)), head, *(array.tobytes() for array in arrays)])


def decode(payload: bytes) -> Fragment:
    """The inverse of `encode`; any payload it did not produce raises ValueError. The arrays are
    read-only views of `payload`."""
    if len(payload) < _HEADER_LENGTH.size:
        raise ValueError(f"payload of {len(payload)} bytes is too short for a header")
    (length,) = _HEADER_LENGTH.unpack_from(payload)
    start = _HEADER_LENGTH.size + length
    if start > len(payload):
        raise ValueError(f"header length {length} runs past the payload's {len(payload)} bytes")
    try:
        header = json.loads(payload[_HEADER_LENGTH.size:start].decode())
    except (ValueError, RecursionError) as error:  # bad utf-8, bad JSON, absurd nesting
        raise ValueError(f"header is not JSON: {error}") from None
    if not isinstance(header, dict) or set(header) - {"evaluation"} != {"format", "episode", "index", "terminated",
                                                                         "truncated", "source", "arrays"}:
        raise ValueError("header does not have exactly the fields of a fragment")
    if header["format"] != _FORMAT:
        raise ValueError(f"unknown fragment format {header['format']!r}")
    specs = header["arrays"]
    if not isinstance(specs, list) or [spec[0] if isinstance(spec, list) and spec else None
                                       for spec in specs] != list(_ARRAYS):
        raise ValueError(f"header must list the arrays {list(_ARRAYS)} in order")
    arrays = {}
    offset = start
    for spec in specs:
        name, dtype, shape = _array_spec(spec)
        count = math.prod(shape) * dtype.itemsize
        if offset + count > len(payload):
            raise ValueError(f"{name} needs {count} bytes, {len(payload) - offset} are left")
        arrays[name] = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)
        offset += count
    if offset != len(payload):
        raise ValueError(f"{len(payload) - offset} bytes follow the last array")
    return Fragment(episode=header["episode"], index=header["index"], terminated=header["terminated"],
                    truncated=header["truncated"], source=header["source"], evaluation=header.get("evaluation", False),
                    **arrays)


def _array_spec(spec: list) -> tuple[str, np.dtype, tuple[int, ...]]:
    """One array's [name, dtype, shape] from a header, checked before any bytes are sliced."""
    if len(spec) != 3 or spec[1] not in _DTYPES or not isinstance(spec[2], list):
        raise ValueError(f"bad array entry {spec!r}: want [name, float32|uint8|int64, shape]")
    shape = spec[2]
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
        raise ValueError(f"bad shape {shape!r} for {spec[0]}")
    return spec[0], _DTYPES[spec[1]], tuple(shape)
