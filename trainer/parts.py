"""What a training run drives, built from its config: the envs, the agent on its device, the replay,
the metric writer. A caller may bring its own (another env, a prepared replay)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from reverie.runs import RunDir

from .agent import Agent
from .config import Config
from .distributed import Ranks
from .envs import make_env, space_info, world_space_info
from .metrics import MetricsWriter
from .replay import Replay, available_memory


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`device=auto` is CUDA when there is one (a data-parallel rank's own), else the CPU; asking for
    CUDA without one is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: this machine has no CUDA device; use device=auto or device=cpu")
    return torch.device(name)


@dataclass
class Parts:
    """The envs the loop plays (none with source=clients) and evaluates in (none for a world given by
    its spaces: its clients evaluate), the agent, the replay, the metric writer. A data-parallel rank
    other than 0 plays, evaluates and writes nothing: it gets no envs and no writer."""

    env: gym.Env | None
    eval_env: gym.Env | None
    agent: Agent
    replay: Replay
    writer: MetricsWriter | None

    @classmethod
    def build(cls, cfg: Config, run: RunDir, ranks: Ranks | None = None) -> "Parts":
        main = ranks is None or ranks.main
        eval_env = make_env(cfg.env_spec) if cfg.spaces is None else None
        space = space_info(eval_env) if eval_env is not None else world_space_info(cfg.spaces)
        obs_dtype = np.uint8 if space.is_image else np.float32
        replay = Replay(cfg.replay_capacity, space.obs_shape, () if space.discrete else (space.action_dim,), obs_dtype)
        replay.check_fits(available_memory())  # before anything is built
        agent = Agent(cfg, space).to(resolve_device(cfg.device, ranks.local_rank if ranks else 0))
        env = make_env(cfg.env_spec) if cfg.source != "clients" and main else None
        return cls(env, eval_env if main else None, agent, replay, MetricsWriter(run) if main else None)
