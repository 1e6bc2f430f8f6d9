"""Training progress for `GET /model`, read from the run directory's metrics.jsonl (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

TAIL_BYTES = 64 << 10


def run_dir_of(models: Path) -> Path | None:
    """The run directory behind a `--models` path, when there is one."""
    for candidate in (models, models.parent, models.parent.parent):
        if (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def training_status(run_dir: Path | None) -> dict | None:
    """The newest logged row's progress and the newest evaluation, from the file's tail."""
    if run_dir is None:
        return None
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # the partial first line of the tail, or a line being written
            continue
    if not rows:
        return None
    last = rows[-1]
    evaluated = [r for r in rows if r.get("eval_return") is not None]
    status = {key: last.get(key) for key in ("env_step", "phase", "updates", "episodes", "wall_s")}
    status["eval_return"] = evaluated[-1]["eval_return"] if evaluated else None
    status["eval_env_step"] = evaluated[-1]["env_step"] if evaluated else None
    status["failure_modes"] = last.get("failure_modes", [])
    return status
