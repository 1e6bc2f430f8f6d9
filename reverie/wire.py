"""The gRPC wire, for the server and the clients alike: the generated messages and the tensor codec.

The messages (`reverie.v1.agent_pb2`, `agent_pb2_grpc`) are generated from `proto/` when the
project is installed (`build_proto.py`); nothing generated is committed or edited. Tensors travel
as raw little-endian bytes with `shape` and `dtype`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from .errors import InputError

try:
    from reverie import v1 as _generated
    from reverie.v1 import agent_pb2, agent_pb2_grpc
except ImportError as err:  # a source checkout that was never installed
    raise ImportError("the gRPC code generated from proto/ is missing: install the project "
                      "(`pip install -e .` generates reverie/v1 from proto/)") from err

PROTO = Path(__file__).resolve().parents[1] / "proto" / "reverie" / "v1" / "agent.proto"


def check_generated(proto: Path, generated_digest: str) -> None:
    """In a source tree, refuse generated code that an edit of the proto has outdated."""
    if proto.is_file() and hashlib.sha256(proto.read_bytes()).hexdigest() != generated_digest:
        raise ImportError(f"{proto} changed since reverie/v1 was generated from it: reinstall (`pip install -e .`)")


check_generated(PROTO, _generated.PROTO_SHA256)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
DTYPES = ("float32", "float64", "int64", "int32", "uint8")
_LITTLE = {np.dtype(name).newbyteorder("<"): name for name in DTYPES}  # dtype.name is slow on a hot path


def message_dict(message) -> dict:
    """A message as plain Python values: what its JSON twin on REST holds (an unset optional field is
    None, a map a dict, a repeated field a list; 64-bit integers stay ints, unlike protobuf's JSON)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"].message_type
            out[field.name] = {k: v if entry is None else list(v) if entry.full_name == "google.protobuf.ListValue"
                               else message_dict(v) for k, v in value.items()}
        elif field.message_type is not None:
            out[field.name] = [message_dict(v) for v in value] if _repeated(field) else message_dict(value)
        else:
            out[field.name] = list(value) if _repeated(field) else value
    return out


def _repeated(field) -> bool:
    """protobuf >= 5.28 says so itself; older ones by the field's label."""
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


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
