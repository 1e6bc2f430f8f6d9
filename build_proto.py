"""The build step that turns `proto/` into Python: grpcio-tools writes `reverie/v1/agent_pb2*.py`.

setuptools runs it as part of `build_py` (pyproject's `[tool.setuptools.cmdclass]`): into the
wheel for an install, into the source tree for an editable one (`pip install -e .`). The
generated package records the hash of the proto it came from, so `reverie.wire` can refuse
code that an edited proto has outdated. Nothing generated is committed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools.command.build_py import build_py as _build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
PROTO = Path("reverie") / "v1" / "agent.proto"


def proto_digest(proto_root: Path = PROTO_ROOT) -> str:
    return hashlib.sha256((proto_root / PROTO).read_bytes()).hexdigest()


def generate(out: Path) -> None:
    """Write `reverie/v1/{__init__,agent_pb2,agent_pb2_grpc}.py` under `out`."""
    from grpc_tools import protoc

    include = Path(protoc.__file__).parent / "_proto"  # the well-known types
    package = out / PROTO.parent
    package.mkdir(parents=True, exist_ok=True)
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(PROTO_ROOT / PROTO)])
    if code != 0:
        raise RuntimeError(f"protoc failed ({code}) on {PROTO_ROOT / PROTO}")
    (package / "__init__.py").write_text(
        f'"""Generated from {PROTO.as_posix()} by build_proto.py; do not edit."""\n\nPROTO_SHA256 = "{proto_digest()}"\n')


class build_py(_build_py):  # noqa: N801 (setuptools' command name)
    def run(self) -> None:
        super().run()
        generate(ROOT if self.editable_mode else Path(self.build_lib))
