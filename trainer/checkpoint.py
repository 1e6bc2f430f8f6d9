"""Checkpoints for exact resume: models, the three optimizers, schedule position, RNG, replay.

Every random draw of a run comes from generators seeded here (`seed_everything`), and their states
go into each checkpoint (`rng_state`, `restore_rng`), so a resumed run draws what it would have.

Written to a temporary name and renamed, so a crash mid-write never leaves a torn file that a
resume would pick up.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from reverie.runs import RunDir


def save_checkpoint(run: RunDir, env_step: int, state: dict, keep: int = 2) -> Path:
    path = run.checkpoint(env_step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in run.checkpoints()[:-keep]:
        old.unlink(missing_ok=True)
    return path


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python's, numpy's and torch's global generators; the loop's own generator, returned."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def rng_state(rng: np.random.Generator) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": rng.bit_generator.state}


def restore_rng(state: dict, rng: np.random.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    rng.bit_generator.state = state["generator"]


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def load_run_agent(run_dir: Path, env_step: int | None = None):
    """(agent, checkpoint state) of a run directory at `env_step` (default: its newest checkpoint):
    the run's own config and spaces, its trained weights. What `reverie export` and the analyses of a
    finished run start from."""
    from .agent import Agent
    from .config import Config
    from .envs import SpaceInfo, make_env, space_info

    run = RunDir(run_dir)
    path = run.latest_checkpoint() if env_step is None else run.checkpoint(env_step)
    if path is None or not path.exists():
        raise FileNotFoundError(f"no checkpoint{'' if env_step is None else f' at env step {env_step}'} in {run.path / 'checkpoints'}")
    cfg = Config.model_validate(run.config())
    state = load_checkpoint(path)
    # The checkpoint names its spaces; one written before it did needs the env to learn them.
    space = SpaceInfo.from_dict(state["space"]) if "space" in state else space_info(make_env(cfg.env_spec))
    agent = Agent(cfg, space)
    agent.load_state_dict(state["agent"])
    return agent, state
