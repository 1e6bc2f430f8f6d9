"""Generated gRPC code for `proto/reverie/v1/agent.proto`, built from the proto at first import.

The code is generated with grpcio-tools into a cache folder keyed by the proto's hash (so an
edited proto regenerates), and that folder is added to the `reverie` package's path, so the
generated modules import as `reverie.v1.agent_pb2`, exactly the proto's package. Nothing
generated is committed.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import reverie

# The source tree's proto/ (editable installs, the repo), else the copy a wheel installs under
# <prefix>/share/reverie/proto (pyproject's data-files).
PROTO_ROOT = next((root for root in (Path(__file__).resolve().parents[1] / "proto",
                                     Path(sys.prefix) / "share" / "reverie" / "proto")
                   if (root / "reverie" / "v1" / "agent.proto").is_file()),
                  Path(__file__).resolve().parents[1] / "proto")
PROTO = PROTO_ROOT / "reverie" / "v1" / "agent.proto"
CACHE_ENV = "REVERIE_CACHE_DIR"


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reverie")


def generate() -> Path:
    """The folder holding `reverie/v1/agent_pb2*.py` for the current proto, generated if missing."""
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    out = _cache_root() / f"grpc-{digest}"
    if (out / "reverie" / "v1" / "agent_pb2_grpc.py").is_file():
        return out
    from grpc_tools import protoc

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".grpc-", dir=out.parent))
    include = Path(protoc.__file__).parent / "_proto"  # well-known types
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={staging}",
                        f"--grpc_python_out={staging}", str(PROTO)])
    if code != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"protoc failed ({code}) on {PROTO}")
    os.chmod(staging, 0o755)  # mkdtemp's folder is private; the cache may be shared (a build user, a runtime user)
    try:
        os.replace(staging, out)  # atomic: a concurrent import either sees all of it or generates its own
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return out


_generated = generate() / "reverie"
if str(_generated) not in reverie.__path__:
    reverie.__path__.append(str(_generated))
agent_pb2 = importlib.import_module("reverie.v1.agent_pb2")
agent_pb2_grpc = importlib.import_module("reverie.v1.agent_pb2_grpc")
SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name
