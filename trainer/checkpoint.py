"""Checkpoints for exact resume: models, the three optimizers, schedule position, RNG, replay.

Written to a temporary name and renamed, so a crash mid-write never leaves a torn file that a
resume would pick up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

PATTERN = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(run_dir: Path, env_step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{env_step:09d}.pt"


def save_checkpoint(run_dir: Path, env_step: int, state: dict, keep: int = 2) -> Path:
    path = checkpoint_path(run_dir, env_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if PATTERN.search(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
