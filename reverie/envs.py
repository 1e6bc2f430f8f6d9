"""The env a run plays, as its config names it: a gymnasium id, and optionally only some observation entries.

Torch-free, so the trainer, `reverie eval` and the clients build the same env from a bundle's
manifest. `obs_indices` turns any vector env into a partially observed one (CartPole without its
velocities is `[0, 2]`): the agent, the bundle and the service only ever see the kept entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np


def check_obs_indices(indices: Sequence[int], obs_space: gym.Space) -> np.ndarray:
    """The indices as an array, or a ValueError naming what is wrong with them for this space."""
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"obs_indices needs a vector (1-d Box) observation space, got {obs_space}")
    size = obs_space.shape[0]
    index = np.asarray(list(indices), dtype=np.int64)
    if index.size == 0:
        raise ValueError("obs_indices must keep at least one observation entry")
    if len(set(index.tolist())) != index.size:
        raise ValueError(f"obs_indices {index.tolist()} repeats an entry")
    if index.min() < 0 or index.max() >= size:
        raise ValueError(f"obs_indices {index.tolist()} out of range for observations of size {size}")
    return index


def keep_entries(env: gym.Env, indices: Sequence[int]) -> gym.Env:
    """`env` observing only `indices` of its vector observation, in that order."""
    index = check_obs_indices(indices, env.observation_space)
    space = env.observation_space
    kept = gym.spaces.Box(space.low[index], space.high[index], dtype=space.dtype)
    return gym.wrappers.TransformObservation(env, lambda obs: obs[index], kept)


def make(env_id: str, obs_indices: Sequence[int] | None = None) -> gym.Env:
    """`gym.make(env_id)`, keeping only `obs_indices` of its observations when given.

    An id gymnasium does not know (or whose extra is missing) is a ValueError with its message."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise ValueError(f"cannot make env {env_id!r}: {err}") from err
    return env if obs_indices is None else keep_entries(env, obs_indices)
