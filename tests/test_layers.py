"""The package layering (clients need neither server nor trainer, the service no torch) and the generated wire.

`reverie/` holds what every side shares (the wire, the evaluation); `clients/` may import only it,
`service/` it and nothing of the trainer. Checked on the import statements themselves, so a new
import anywhere in a module (not only at its top) is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"clients": {"service", "trainer", "torch"}, "service": {"trainer", "torch"}, "reverie": {"service", "trainer", "torch", "clients"}}
# reverie/ is shared, but the commands in reverie/cli.py and reverie/up.py run the trainer and the service.
ENTRY_POINTS = {"reverie/cli.py", "reverie/up.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports (relative imports stay in their own package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_across_its_layer(package):
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in ENTRY_POINTS or relative.startswith("reverie/v1/"):
            continue
        bad = imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders[relative] = sorted(bad)
    assert offenders == {}


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The reader finds imports inside functions and `from x.y import z` forms alike."""
    module = tmp_path / "m.py"
    module.write_text("import numpy\n\ndef f():\n    from service.store import ModelStore\n    import torch.nn\n")
    assert imported_packages(module) == {"numpy", "service", "torch"}


def test_the_wire_refuses_code_generated_from_another_proto(tmp_path):
    """reverie/v1 records the hash of the proto it was built from; an edited proto is named, not half-used."""
    from reverie import v1, wire

    wire.check_generated(wire.PROTO, v1.PROTO_SHA256)  # this install: built from this tree's proto
    edited = tmp_path / "agent.proto"
    edited.write_bytes(wire.PROTO.read_bytes() + b"\n// an edit\n")
    with pytest.raises(ImportError, match="changed since reverie/v1 was generated"):
        wire.check_generated(edited, v1.PROTO_SHA256)
    wire.check_generated(tmp_path / "absent.proto", v1.PROTO_SHA256)  # an installed wheel has no proto/ to compare
