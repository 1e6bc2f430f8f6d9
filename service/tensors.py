"""numpy <-> the proto's Tensor (raw little-endian bytes, shape, dtype), for server and client alike."""

from __future__ import annotations

import math

import numpy as np

from .inputs import InputError
from .proto import agent_pb2

DTYPES = ("float32", "float64", "int64", "int32", "uint8")
_LITTLE = {np.dtype(name).newbyteorder("<"): name for name in DTYPES}  # dtype.name is slow on a hot path


def to_tensor(array) -> agent_pb2.Tensor:
    array = np.asarray(array)
    name = _LITTLE.get(array.dtype)
    if name is None:  # another dtype or byte order: convert to the nearest one the contract names
        array = array.astype(("<f4" if array.dtype.kind == "f" else "<i8") if array.dtype.name not in DTYPES
                             else array.dtype.newbyteorder("<"))
        name = _LITTLE[array.dtype]
    return agent_pb2.Tensor(data=array.tobytes(), shape=array.shape, dtype=name)


def from_tensor(tensor: agent_pb2.Tensor, field: str) -> np.ndarray:
    """Decode, checking dtype and that the byte length matches shape x itemsize (errors name the field)."""
    if tensor.dtype not in DTYPES:
        raise InputError(f"{field}.dtype", f"must be one of {', '.join(DTYPES)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InputError(f"{field}.shape", "dimensions must be non-negative")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InputError(f"{field}.data", f"holds {len(tensor.data)} bytes; shape {list(shape)} of {tensor.dtype} needs {expected}")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
