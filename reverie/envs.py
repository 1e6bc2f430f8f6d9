"""The env a run plays, as its config names it (`EnvSpec`): a gymnasium id, optionally only some
observation entries, or its rendered frames.

Torch-free, so the trainer, `reverie eval` and the clients build the same env from a bundle's
manifest. `obs_indices` turns any vector env into a partially observed one (CartPole without its
velocities is `[0, 2]`): the agent, the bundle and the service only ever see the kept entries.
`pixels` turns any env that renders `rgb_array` into a game seen from its frames; `ALE/...` ids are
Atari games, always seen from frames, with the usual Atari preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

DEFAULT_IMAGE_SIZE = 84  # the seed's [84x84x3]


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


def resize(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB frame [H, W, 3] uint8 -> [size, size, 3] uint8, area-averaged (a thin pole stays visible)."""
    from PIL import Image

    return np.array(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))  # a writable copy


class ActionRepeat(gym.Wrapper):
    """Each action held for `repeat` env steps (rewards summed, stopping at an episode's end): the
    standard for pixel agents, which cannot tell apart frames a few milliseconds apart."""

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = repeat

    def step(self, action):
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class Frames(gym.ObservationWrapper):
    """The env's `rgb_array` render as its observation, resized to [size, size, 3] uint8."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        self.size = size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)

    def observation(self, obs):
        return resize(self.env.render(), self.size)


@dataclass(frozen=True)
class EnvSpec:
    """Everything that decides what the agent sees and does: the trainer, `reverie eval`, the game
    loop and the preview client make the same env from it (a bundle's manifest carries its fields)."""

    env_id: str
    obs_indices: tuple[int, ...] | None = None
    pixels: bool = False  # the env's rendered frames instead of its observation
    image_size: int = DEFAULT_IMAGE_SIZE  # frames are [image_size, image_size, 3] uint8
    action_repeat: int | None = None  # None: 4 for Atari (its frame skip), 2 for other frames, 1 for vectors

    def __post_init__(self):
        if self.obs_indices is not None:
            object.__setattr__(self, "obs_indices", tuple(self.obs_indices))

    @classmethod
    def of(cls, source: Any) -> "EnvSpec":
        """The spec of a config, a manifest, or a manifest as a dict (gRPC's has [] for no indices)."""
        wire = isinstance(source, dict)  # a manifest as JSON: gRPC has no null, so [] means all entries
        get = source.get if wire else lambda key, default=None: getattr(source, key, default)
        indices = get("obs_indices")
        return cls(get("env_id"), None if wire and not indices else indices, bool(get("pixels", False)),
                   int(get("image_size") or DEFAULT_IMAGE_SIZE), get("action_repeat") or None)

    @property
    def atari(self) -> bool:
        return self.env_id.startswith("ALE/")

    @property
    def frames(self) -> bool:
        """Whether the agent sees images."""
        return self.pixels or self.atari

    @property
    def repeat(self) -> int:
        if self.action_repeat is not None:
            return self.action_repeat
        return 4 if self.atari else 2 if self.pixels else 1

    def make(self) -> gym.Env:
        """The env. An id gymnasium does not know (or whose extra is missing) is a ValueError with its message."""
        try:
            if self.atari:
                return self._atari()
            if self.pixels:  # pygame renders the classic-control frames off screen: no display, no sound card
                os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
                os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
            env = gym.make(self.env_id, **({"render_mode": "rgb_array"} if self.pixels else {}))
        except (gym.error.Error, ImportError) as err:
            raise ValueError(f"cannot make env {self.env_id!r}: {err}") from err
        if self.pixels and self.obs_indices is not None:
            raise ValueError("obs_indices keeps entries of a vector observation; pixels gives frames: choose one")
        if self.repeat > 1:
            env = ActionRepeat(env, self.repeat)
        if self.pixels:
            return Frames(env, self.image_size)
        return env if self.obs_indices is None else keep_entries(env, self.obs_indices)

    def _atari(self) -> gym.Env:
        """An ALE game in colour at image_size: no-op starts, the action repeated `repeat` frames with the
        last two max-pooled (gymnasium's AtariPreprocessing); the ROMs ship in the ale-py wheel."""
        import ale_py

        gym.register_envs(ale_py)
        if self.obs_indices is not None:
            raise ValueError("obs_indices keeps entries of a vector observation; Atari games give frames")
        env = gym.make(self.env_id, frameskip=1)
        return gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=self.repeat, screen_size=self.image_size,
                                               grayscale_obs=False)


def make(spec: EnvSpec | str, obs_indices: Sequence[int] | None = None) -> gym.Env:
    """The env of a spec, or of an id (keeping only `obs_indices` of its observations when given)."""
    return (spec if isinstance(spec, EnvSpec) else EnvSpec(spec, obs_indices)).make()
