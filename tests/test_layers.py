"""The package layering (clients need neither server nor trainer, the service no torch) and the generated wire.

Every folder installs under the `reverie` namespace and is one layer: `reverie/` holds the contract
every side shares (the wire, the bundle, the evaluation) and imports none of the others; `clients/`
may import only it; `service/` it and nothing of the trainer; `trainer/` anything but the commands;
`cli/`, the `reverie` command, sits above them all. Checked on the import statements themselves
(relative ones resolved), so a new import anywhere in a module (not only at its top) is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("reverie", "clients", "service", "trainer", "cli")  # folder = the installed reverie.<folder>
FORBIDDEN = {
    "reverie": {"reverie.service", "reverie.trainer", "reverie.clients", "reverie.cli", "torch"},
    "clients": {"reverie.service", "reverie.trainer", "reverie.cli", "torch"},
    "service": {"reverie.trainer", "reverie.cli", "torch"},
    "trainer": {"reverie.cli"},
}


def module_name(path: Path) -> str:
    """The installed name of a module under one of the layers' folders."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "reverie" else ["reverie", *parts])


def imported_packages(path: Path, source: str | None = None) -> set[str]:
    """The layers a module (`source`, or the file's text) imports: `reverie.<layer>` for the installed folders, the top-level name otherwise."""
    found = set()
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module] if node.module else [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[0] == "reverie" and len(parts) > 1 and parts[1] in LAYERS else parts[0])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_above_itself(layer):
    offenders = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("reverie/v1/", "clients/examples/")):
            continue
        bad = imported_packages(path) & FORBIDDEN[layer]
        if bad:
            offenders[relative] = sorted(bad)
    assert offenders == {}


def test_the_check_sees_a_forbidden_import():
    """The reader finds imports inside functions, `from x.y import z` forms and relative imports alike."""
    source = ("import numpy\n\ndef f():\n    from reverie.service.store import ModelStore\n    import torch.nn\n"
              "    from ..cli import up\n    from .. import trainer\n")
    assert imported_packages(ROOT / "reverie" / "experience" / "probe.py", source) == {"numpy", "reverie.service", "torch", "reverie.cli", "reverie.trainer"}


def test_nothing_installs_at_the_top_level_but_reverie(tmp_path):
    """A wheel of this tree holds the reverie package and its metadata only: no generic top-level
    `trainer`, `service` or `clients` to collide with other distributions."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # The sources a wheel is built from, as a clean checkout holds them (no generated reverie/v1), built outside the tree
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "build_proto.py"):
        shutil.copy2(ROOT / name, source / name)
    def generated(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n in ("__pycache__", "node_modules", "dist") or Path(folder, n) == ROOT / "reverie" / "v1"]

    for name in ("proto", "reverie", "trainer", "service", "clients", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=generated)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, timeout=300)
    (wheel,) = tmp_path.glob("reverie-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"reverie"}
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"reverie/trainer/loop.py", "reverie/service/static/live.html", "reverie/cli/__main__.py",
            "reverie/v1/agent_pb2.py"} <= names


def test_the_wire_refuses_code_generated_from_another_proto(tmp_path):
    """reverie/v1 records the hash of the proto it was built from; an edited proto is named, not half-used."""
    from reverie import v1, wire

    wire.check_generated(wire.PROTO, v1.PROTO_SHA256)  # this install: built from this tree's proto
    edited = tmp_path / "agent.proto"
    edited.write_bytes(wire.PROTO.read_bytes() + b"\n// an edit\n")
    with pytest.raises(ImportError, match="changed since reverie/v1 was generated"):
        wire.check_generated(edited, v1.PROTO_SHA256)
    wire.check_generated(tmp_path / "absent.proto", v1.PROTO_SHA256)  # an installed wheel has no proto/ to compare
