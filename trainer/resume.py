"""Where a run starts: a fresh one in an empty directory, or the newest checkpoint of one under way.

A run directory holds one run. Resuming keeps the saved configuration; the keys the user gives again
change it (logged), except those the checkpoint's tensors were shaped by (FIXED_ON_RESUME), which are
refused with the command for a fresh run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reverie.runs import RunDir

from .config import FIXED_ON_RESUME, Config

log = logging.getLogger("reverie.trainer")


def reconcile(run: RunDir, cfg: Config, resume: bool, given: frozenset[str]) -> tuple[Config, Path | None]:
    """(the run's config, the checkpoint to resume from or None), the config written to the run directory.

    `given`: the keys the user set (preset, --set, flags)."""
    checkpoint = run.latest_checkpoint()
    if resume and checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run.path / 'checkpoints'}")
    if not resume and (checkpoint is not None or run.metrics_file.exists()):
        # Two runs in one directory would share checkpoints and metrics: refuse rather than mix them.
        raise FileExistsError(f"{run.path} already holds a run: continue it with --resume, or pick a new --run-dir")
    if checkpoint is not None:
        saved = Config.model_validate(run.config())
        changed = {k: getattr(cfg, k) for k in sorted(given - {"total_steps"}) if getattr(cfg, k) != getattr(saved, k)}
        fixed = [f"{k} ({getattr(saved, k)!r} -> {v!r})" for k, v in changed.items() if k in FIXED_ON_RESUME]
        if fixed:
            raise ValueError(f"--resume cannot change {', '.join(fixed)}: the checkpoint was trained with the "
                             "saved values; start a new --run-dir to change them")
        for key, value in changed.items():
            log.info("resume: %s %r -> %r (given)", key, getattr(saved, key), value)
        cfg = saved.model_copy(update={**changed, "total_steps": max(cfg.total_steps, saved.total_steps)})
        cfg = Config.model_validate(cfg.model_dump())  # the combination is validated like any config
    run.write_config(cfg.model_dump_json(indent=2))
    return cfg, checkpoint
