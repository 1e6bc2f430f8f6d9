"""The run directory as trainer, service and `reverie up` all see it (no torch).

    RUN_DIR/config.json, metrics.jsonl, training_curves.png, tensorboard/    the trainer's record
    RUN_DIR/checkpoints/step_000002500.pt                                    resumable states
    RUN_DIR/export/v000001/ ...                                              bundles (reverie.bundle)
    RUN_DIR/status.json                                                      training progress, for the service

The trainer rewrites `status.json` after every metric row (atomically); the service reads that
small file for `/model` and `GetModel` instead of parsing the trainer's log. Every reader of a run's
files reads them here: its config (`read_config`), its metric rows (`read_metrics`, `MetricRows`),
its status and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path

CHECKPOINT = re.compile(r"step_(\d+)\.pt$")
STATUS_FILE = "status.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}  # written as strings: JSON has no NaN
STATUS_KEYS = ("env_step", "phase", "updates", "episodes", "wall_s", "eval_return", "eval_env_step", "failure_modes",
               "imagination_fidelity", "diagnosis", "phases")


def checkpoint_path(run_dir: Path, env_step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{env_step:09d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (a write in progress has another name), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CHECKPOINT.search(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_status(run_dir: Path | None) -> dict | None:
    """The trainer's latest published progress, or None (no run there, or nothing published yet)."""
    if run_dir is None:
        return None
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def publish_status(run_dir: Path, row: dict, fidelity: dict | None = None, findings: dict | None = None,
                   phases: dict[str, int] | None = None) -> None:
    """Publish a metric row's progress; an evaluation, and the imagination fidelity measured with it
    (env_step and, per imagined step, state_error, obs_error, reward_error, continue_accuracy), are
    carried forward until the next one. `findings`: the failure modes that fired on this row, each
    with its env step, evidence and --set lines to try; `diagnosis` keeps each mode's latest.
    `phases`: the env step each phase after warmup starts at, as the trainer's schedule has them."""
    previous = read_status(run_dir) or {}
    status = {key: row.get(key) for key in STATUS_KEYS[:5]}
    evaluated = row.get("eval_return") is not None
    status["eval_return"] = row["eval_return"] if evaluated else previous.get("eval_return")
    status["eval_env_step"] = row["env_step"] if evaluated else previous.get("eval_env_step")
    status["failure_modes"] = list(row.get("failure_modes", []))
    status["imagination_fidelity"] = fidelity if fidelity is not None else previous.get("imagination_fidelity")
    status["diagnosis"] = {**previous.get("diagnosis", {}), **(findings or {})}
    status["phases"] = phases if phases is not None else previous.get("phases", {})
    path = Path(run_dir) / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)  # a reader sees the old status or the new one, never half of one


def read_config(run_dir: Path) -> dict:
    """The run's config as the trainer wrote it (the trainer validates it as its `Config`)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no run (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def metric_row(line: str | bytes) -> dict:
    """One line of metrics.jsonl, its non-finite values restored as floats."""
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in json.loads(line).items()}


def read_metrics(run_dir: Path) -> list[dict]:
    """All rows of a run's metrics.jsonl, oldest first (none when there is no file yet)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [metric_row(line) for line in path.read_text().splitlines() if line.strip()]


class MetricRows:
    """A run's metrics.jsonl, read incrementally: each call parses only the lines added since the last."""

    def __init__(self):
        self.path: Path | None = None
        self.rows: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self, run_dir: Path) -> list[dict]:
        path = Path(run_dir) / METRICS_FILE
        with self._lock:
            if path != self.path:
                self.path, self.rows, self._offset = path, [], 0
            try:
                with open(path, "rb") as f:
                    if f.seek(0, 2) < self._offset:  # a new run in the same place
                        self.rows, self._offset = [], 0
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return self.rows
            complete = data[:data.rfind(b"\n") + 1]  # a line being written is read next time
            self._offset += len(complete)
            self.rows += [metric_row(line) for line in complete.splitlines() if line.strip()]
            return self.rows


def run_dir_of(models: Path) -> Path | None:
    """The run directory behind a `--models` path (the run dir, its export/ or one bundle), when there is one."""
    models = Path(models)
    for candidate in (models, models.parent, models.parent.parent):
        if (candidate / CONFIG_FILE).is_file() or (candidate / STATUS_FILE).is_file():
            return candidate
    return None
