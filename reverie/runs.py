"""The run directory as trainer, service and `reverie up` all see it (no torch): `RunDir`.

    RUN_DIR/config.json, metrics.jsonl, training_curves.png, tensorboard/    the trainer's record
    RUN_DIR/checkpoints/step_000002500.pt                                    resumable states
    RUN_DIR/export/v000001/ ...                                              bundles (reverie.bundle)
    RUN_DIR/status.json                                                      training progress, for the service

The trainer rewrites `status.json` after every metric row (atomically); the service reads that
small file for `/model` and `GetModel` instead of parsing the trainer's log. `RunDir` is the one
reader and writer of these files (the live page reads new metric rows incrementally through
`MetricRows`); checkpoints are written by the trainer's torch code at the paths it names.
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


def metric_row(line: str | bytes) -> dict:
    """One line of metrics.jsonl, its non-finite values restored as floats."""
    return {k: NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in json.loads(line).items()}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep the row parseable and the symptom visible
    return value


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


class RunDir:
    """One run's directory: the only reader and writer of its files, for the trainer, `reverie
    export`, diagnostics, the benchmarks and the service's `/model` and live page."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def behind(cls, models: Path | str) -> "RunDir | None":
        """The run behind a `--models` path (the run dir, its export/ or one bundle), when there is one."""
        models = Path(models)
        for candidate in (models, models.parent, models.parent.parent):
            if (candidate / CONFIG_FILE).is_file() or (candidate / STATUS_FILE).is_file():
                return cls(candidate)
        return None

    # -------------------------------------------------------------- where things are
    @property
    def export(self) -> Path:
        """Bundles (reverie.bundle): what `reverie serve` loads."""
        return self.path / "export"

    @property
    def experience(self) -> Path:
        """The clients' experience log when `reverie up` keeps it here."""
        return self.path / "experience"

    @property
    def curves(self) -> Path:
        return self.path / "training_curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    # -------------------------------------------------------------- config
    def holds_run(self) -> bool:
        """Something was trained here: a config or metric rows."""
        return (self.path / CONFIG_FILE).is_file() or self.metrics_file.exists()

    def config(self) -> dict:
        """The run's config as the trainer wrote it (the trainer validates it as its `Config`)."""
        path = self.path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} holds no run (no {CONFIG_FILE})")
        return json.loads(path.read_text())

    def write_config(self, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path / CONFIG_FILE, text)

    # -------------------------------------------------------------- metric rows
    def metrics(self) -> list[dict]:
        """All rows of metrics.jsonl, oldest first (none when there is no file yet)."""
        if not self.metrics_file.exists():
            return []
        return [metric_row(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def append_metrics(self, row: dict) -> None:
        """One row more; NaN and inf written as strings (JSON has none) and restored by `metric_row`."""
        with self.metrics_file.open("a") as f:
            f.write(json.dumps({k: _json_safe(v) for k, v in row.items()}) + "\n")

    # -------------------------------------------------------------- status
    def status(self) -> dict | None:
        """The trainer's latest published progress, or None (no run here, or nothing published yet)."""
        try:
            return json.loads((self.path / STATUS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def publish_status(self, row: dict, fidelity: dict | None = None, findings: dict | None = None,
                       phases: dict[str, int] | None = None) -> None:
        """Publish a metric row's progress; an evaluation, and the imagination fidelity measured with it
        (env_step and, per imagined step, state_error, obs_error, reward_error, continue_accuracy), are
        carried forward until the next one. `findings`: the failure modes that fired on this row, each
        with its env step, evidence and --set lines to try; `diagnosis` keeps each mode's latest.
        `phases`: the env step each phase after warmup starts at, as the trainer's schedule has them."""
        previous = self.status() or {}
        status = {key: row.get(key) for key in STATUS_KEYS[:5]}
        evaluated = row.get("eval_return") is not None
        status["eval_return"] = row["eval_return"] if evaluated else previous.get("eval_return")
        status["eval_env_step"] = row["env_step"] if evaluated else previous.get("eval_env_step")
        status["failure_modes"] = list(row.get("failure_modes", []))
        status["imagination_fidelity"] = fidelity if fidelity is not None else previous.get("imagination_fidelity")
        status["diagnosis"] = {**previous.get("diagnosis", {}), **(findings or {})}
        status["phases"] = phases if phases is not None else previous.get("phases", {})
        _write_atomically(self.path / STATUS_FILE, json.dumps(status))

    # -------------------------------------------------------------- checkpoints
    def checkpoint(self, env_step: int) -> Path:
        """Where the checkpoint of `env_step` is (or goes)."""
        return self.path / "checkpoints" / f"step_{env_step:09d}.pt"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (a write in progress has another name), oldest first."""
        folder = self.path / "checkpoints"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if CHECKPOINT.search(p.name))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


class MetricRows:
    """A run's metrics.jsonl, read incrementally: each call parses only the lines added since the last."""

    def __init__(self):
        self.path: Path | None = None
        self.rows: list[dict] = []
        self._offset = 0
        self._lock = threading.Lock()

    def read(self, run: RunDir) -> list[dict]:
        path = run.metrics_file
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
