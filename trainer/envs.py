"""Gymnasium environments and the two action kinds the agent speaks (Discrete, Box).

The agent always acts in a normalised space: a class index for Discrete, a vector in
[-1, 1] for Box. `to_env_action` maps that onto the env's own bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import gymnasium as gym
import numpy as np

from reverie import envs
from reverie.actions import ActionCoding
from reverie.bundle import WorldSpaces


@dataclass(frozen=True)
class SpaceInfo:
    """What the components need to know about an env's spaces."""

    obs_shape: tuple[int, ...]
    discrete: bool
    action_dim: int  # number of classes (Discrete) or vector size (Box)
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @cached_property
    def coding(self) -> ActionCoding:
        """Built once: `to_env_action` runs on every env step."""
        return ActionCoding(self.discrete, self.action_low, self.action_high)

    def to_env_action(self, action: np.ndarray | int):
        """Agent action (index, or vector in [-1, 1]) -> the value `env.step` takes."""
        env_action = self.coding.to_env(action)
        return int(env_action) if self.discrete else env_action

    def to_dict(self) -> dict:
        """Plain values, for checkpoints: a run's spaces are known without making its env."""
        bounds = {} if self.discrete else {"action_low": self.action_low.tolist(), "action_high": self.action_high.tolist()}
        return {"obs_shape": list(self.obs_shape), "discrete": self.discrete, "action_dim": self.action_dim, **bounds}

    @classmethod
    def from_dict(cls, d: dict) -> "SpaceInfo":
        low, high = (None, None) if d["discrete"] else (np.asarray(d["action_low"], np.float32), np.asarray(d["action_high"], np.float32))
        return cls(tuple(d["obs_shape"]), d["discrete"], d["action_dim"], low, high)


def world_space_info(spaces: WorldSpaces) -> SpaceInfo:
    """The agent's spaces from a spaces file (a world at the client): no env is made."""
    obs, act = spaces.observation_space, spaces.action_space
    if act.kind == "discrete":
        return SpaceInfo(tuple(obs.shape), True, act.n)
    return SpaceInfo(tuple(obs.shape), False, act.shape[0], np.asarray(act.low, np.float32), np.asarray(act.high, np.float32))


def space_info(env: gym.Env) -> SpaceInfo:
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise ValueError(f"observation space must be a Box, got {obs_space}")
    if isinstance(act_space, gym.spaces.Discrete):
        return SpaceInfo(tuple(obs_space.shape), True, int(act_space.n))
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        low, high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("Box action spaces need finite bounds")
        return SpaceInfo(tuple(obs_space.shape), False, int(act_space.shape[0]), low, high)
    raise ValueError(f"action space must be Discrete or a 1-d Box, got {act_space}")


def make_env(spec: envs.EnvSpec | str, seed: int | None = None) -> gym.Env:
    """The env of `spec` (an `EnvSpec`, or a gymnasium id) with its spaces checked; `seed` seeds its
    first reset and action space."""
    env = envs.make(spec)
    space_info(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
