"""Replay of whole episodes, stored step by step in one ring of arrays.

Each step keeps its episode id and whether the episode ended there, so samplers can
respect episode boundaries; for now it samples flat transitions.
"""

from __future__ import annotations

import numpy as np
import torch


class Replay:
    FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "episode_end", "episode")

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...], obs_dtype=np.float32):
        self.capacity = capacity
        self.obs_shape, self.action_shape, self.obs_dtype = obs_shape, action_shape, np.dtype(obs_dtype)
        self.data: dict[str, np.ndarray] = {}
        self.size = 0
        self.cursor = 0
        self.episodes = 0  # id of the episode being written
        self._allocated = 0

    def _grow(self, needed: int) -> None:
        """Allocate lazily (doubling) so a small run never reserves the full capacity."""
        new = min(self.capacity, max(needed, 2 * self._allocated, 1024))
        shapes = {
            "obs": (self.obs_shape, self.obs_dtype), "next_obs": (self.obs_shape, self.obs_dtype),
            "action": (self.action_shape, np.float32), "reward": ((), np.float32),
            "terminated": ((), np.float32), "episode_end": ((), np.bool_), "episode": ((), np.int64),
        }
        for name, (shape, dtype) in shapes.items():
            arr = np.zeros((new, *shape), dtype=dtype)
            if name in self.data:
                arr[: self._allocated] = self.data[name]
            self.data[name] = arr
        self._allocated = new

    def add(self, obs, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        if self.cursor >= self._allocated:
            self._grow(self.cursor + 1)
        i = self.cursor
        d = self.data
        d["obs"][i], d["action"][i], d["reward"][i], d["next_obs"][i] = obs, action, reward, next_obs
        d["terminated"][i], d["episode_end"][i], d["episode"][i] = terminated, terminated or truncated, self.episodes
        if terminated or truncated:
            self.episodes += 1
        self.cursor = (self.cursor + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def close_episode(self) -> None:
        """Mark the last stored step as an episode end (an episode cut short by a stop)."""
        last = (self.cursor - 1) % self.capacity
        if self.size and not self.data["episode_end"][last]:
            self.data["episode_end"][last] = True
            self.episodes += 1

    def __len__(self) -> int:
        return self.size

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Uniform flat transitions as float tensors on `device`: obs, action, reward, next_obs, terminated."""
        idx = rng.integers(0, self.size, size=batch_size)
        return {k: torch.as_tensor(self.data[k][idx]).to(device).float()
                for k in ("obs", "action", "reward", "next_obs", "terminated")}

    def state_dict(self) -> dict:
        return {"size": self.size, "cursor": self.cursor, "episodes": self.episodes,
                "data": {k: v[: max(self.size, self.cursor)].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        n = len(state["data"]["obs"]) if state["data"] else 0
        if n:
            self._grow(n)
            for k, v in state["data"].items():
                self.data[k][:n] = v
        self.size, self.cursor, self.episodes = state["size"], state["cursor"], state["episodes"]
