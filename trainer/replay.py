"""Replay of whole episodes, stored step by step in one ring of arrays.

Each step keeps its episode id and whether the episode ended there, so the sequence sampler
(diagram 4) never joins two episodes: what lies past an end is padding, and its mask says so.
"""

from __future__ import annotations

import math

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
        self._terminal: set[int] = set()  # slots holding a terminal transition (for `endings`)
        self._terminal_array: np.ndarray | None = None

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
        if terminated or i in self._terminal:  # a new terminal, or a wrapped ring overwriting one
            self._terminal.discard(i)
            if terminated:
                self._terminal.add(i)
            self._terminal_array = None
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

    def extra_endings(self, batch_size: int, floor: float) -> int:
        """How many endings to add to a uniform batch so that they make at least `floor` of it
        (k of batch_size + k): none while the replay's own share already reaches the floor."""
        share = len(self._terminal) / self.size if self.size else 0.0
        if not self._terminal or share >= floor:
            return 0
        return math.ceil(batch_size * (floor - share) / (1.0 - floor))

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu",
               endings: int = 0) -> dict[str, torch.Tensor]:
        """Uniform flat transitions as float tensors on `device`: obs, action, reward, next_obs, terminated.

        With `endings` > 0 and any terminal transition stored, also `ending_next_obs`: that many
        observations where an episode ended, drawn from the endings alone, for the continue head
        only; and `ending_share`, the endings' share of the replay, so the loss can undo the
        over-representation (`losses.continue_loss`). An episode that ends once in 500 steps would
        otherwise reach the continue head a few times per thousand samples.
        """
        idx = rng.integers(0, self.size, size=batch_size)
        batch = {k: torch.as_tensor(self.data[k][idx]).to(device).float()
                 for k in ("obs", "action", "reward", "next_obs", "terminated")}
        if endings and self._terminal:
            if self._terminal_array is None:
                self._terminal_array = np.sort(np.fromiter(self._terminal, np.int64, len(self._terminal)))  # set order aside
            picked = self._terminal_array[rng.integers(0, len(self._terminal_array), size=endings)]
            batch["ending_next_obs"] = torch.as_tensor(self.data["next_obs"][picked]).to(device).float()
            batch["ending_share"] = torch.tensor(len(self._terminal_array) / self.size, device=device)
        return batch

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator,
                         device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """`batch_size` runs of `length` consecutive steps: the flat batch's fields as [B, T, ...], and
        `mask` [B, T], true where step t still belongs to the episode and stored stretch of step 0.

        A run is cut at its episode's end (the end step itself is kept: its transition is real) and at
        the ring's newest step; the cut-off positions repeat the last valid step (finite numbers,
        never another episode's) and are false in `mask`, so every loss can ignore them.
        """
        start = rng.integers(0, self.size, size=batch_size)
        offset = np.arange(length)
        full = self.size == self.capacity
        idx = (start[:, None] + offset) % self.capacity if full else np.minimum(start[:, None] + offset, self.size - 1)
        # Slots written after the start, in ring order: the stretch ends at the newest step (cursor - 1).
        newest = (self.cursor - 1 - start) % self.capacity if full else self.size - 1 - start
        stored = offset[None, :] <= newest[:, None]
        same_episode = self.data["episode"][idx] == self.data["episode"][start][:, None]  # ids change after each end
        mask = stored & same_episode
        last_valid = mask.sum(1) - 1  # the mask is a prefix: step 0 is always valid
        idx = np.where(mask, idx, idx[np.arange(batch_size), last_valid][:, None])
        batch = {k: torch.as_tensor(self.data[k][idx]).to(device).float()
                 for k in ("obs", "action", "reward", "next_obs", "terminated")}
        batch["mask"] = torch.as_tensor(mask).to(device)
        return batch

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
        self._terminal = set(np.flatnonzero(self.data["terminated"][: self.size]).tolist()) if n else set()
        self._terminal_array = None
