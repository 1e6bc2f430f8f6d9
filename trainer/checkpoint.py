"""Checkpoints for exact resume: models, the three optimizers, schedule position, RNG, replay.

Every random draw of a run comes from generators seeded here (`seed_everything`), and their states
go into each checkpoint (`rng_state`, `restore_rng`), so a resumed run draws what it would have.

Written to a temporary name and renamed, so a crash mid-write never leaves a torn file that a
resume would pick up.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reverie.runs import RunDir

log = logging.getLogger("reverie.trainer")


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


class Checkpoints:
    """A run's checkpoints: its parts' own state_dicts by name, the loop's position, and every rank's
    generators. In a data-parallel run (`ranks`) the other ranks hand theirs to rank 0, which alone
    writes; the parts are the same on every rank."""

    def __init__(self, run: RunDir, parts: dict[str, Any], rng: np.random.Generator, ranks=None,
                 with_replay: bool = True):
        self.run, self.parts, self.rng, self.ranks, self.with_replay = run, parts, rng, ranks, with_replay
        self.rank = 0 if ranks is None else ranks.rank

    def save(self, env_step: int, position: dict, space: dict) -> Path | None:
        """The checkpoint at `env_step` (None on a rank other than 0)."""
        rngs = [rng_state(self.rng)] if self.ranks is None else self.ranks.collect(rng_state(self.rng))
        if self.rank != 0:
            return None
        state = {name: part.state_dict() for name, part in self.parts.items() if name != "replay" or self.with_replay}
        state.update(space=space, position=position, rng=rngs[0], rank_rngs=rngs[1:])
        return save_checkpoint(self.run, env_step, state)

    def restore(self, path: Path) -> dict:
        """Load every part and this rank's generators; the loop's position, returned."""
        state = load_checkpoint(path)
        for name, part in self.parts.items():
            if state.get(name) is not None:  # a checkpoint without the replay (checkpoint_replay=false) resumes empty
                part.load_state_dict(state[name])
        rngs = [state["rng"], *state.get("rank_rngs", [])]
        if self.rank < len(rngs):
            restore_rng(rngs[self.rank], self.rng)
        else:  # resumed with more processes than saved: this rank goes on from its fresh seed
            log.warning("rank %d: the checkpoint holds %d ranks' generators; this rank draws afresh", self.rank, len(rngs))
        return state["position"]


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
