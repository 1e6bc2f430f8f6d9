"""Checkpoints for exact resume: models, the three optimizers, schedule position, RNG, replay.

Written to a temporary name and renamed, so a crash mid-write never leaves a torn file that a
resume would pick up.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from reverie.runs import checkpoint_path, list_checkpoints


def save_checkpoint(run_dir: Path, env_step: int, state: dict, keep: int = 2) -> Path:
    path = checkpoint_path(run_dir, env_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
