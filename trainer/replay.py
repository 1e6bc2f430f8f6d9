"""Replay of whole episodes, stored step by step in one ring of slots, each observation once.

A slot holds an observation and the transition taken from it (action, reward, flags, episode id);
the transition's next observation is the next slot's. An episode of n steps fills n + 1 slots: its
last slot holds the final observation and no transition (`valid` is false there), so a frame is
stored once, not as one step's `next_obs` and the next step's `obs` (half the memory, which for
84x84x3 frames is what decides how much experience fits).

Each step keeps its episode id, so the sequence sampler (diagram 4) never joins two episodes: what
lies past an end is padding, and its mask says so.
"""

from __future__ import annotations

import math

import numpy as np
import torch

KEYS = ("obs", "action", "reward", "next_obs", "terminated")  # what a sampled batch holds


def available_memory() -> int | None:
    """Bytes this process may still take: the machine's available memory, within a container's
    limit when there is one (cgroup v2); None where neither can be read."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                found.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


class Replay:
    FIELDS = ("obs", "action", "reward", "terminated", "episode_end", "episode", "valid")

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], action_shape: tuple[int, ...], obs_dtype=np.float32):
        if capacity < 2:
            raise ValueError("a replay needs room for at least 2 slots (an observation and the next)")
        self.capacity = capacity
        self.obs_shape, self.action_shape, self.obs_dtype = obs_shape, action_shape, np.dtype(obs_dtype)
        self.data: dict[str, np.ndarray] = {}
        self.size = 0  # stored transitions (valid slots)
        self.cursor = 0  # the slot the next transition goes to
        self.filled = 0  # slots ever written (<= capacity)
        self.episodes = 0  # id of the episode being written
        self.open = False  # the episode goes on: the cursor slot holds its next observation already
        self._allocated = 0
        self._terminal: set[int] = set()  # slots holding a terminal transition (for `endings`)
        self._terminal_array: np.ndarray | None = None

    @property
    def bytes_per_slot(self) -> int:
        """Memory one slot takes once allocated."""
        return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in self._shapes().values())

    def check_fits(self, available: int | None) -> None:
        """A ValueError, before anything is stored, when the full replay would not fit in `available`
        bytes (it grows as it fills: without this, a run too big is killed hours in)."""
        needed = self.capacity * self.bytes_per_slot
        if available is not None and needed > available:
            per = 100_000 * self.bytes_per_slot / 2**30
            raise ValueError(f"replay_capacity {self.capacity:,} needs {needed / 2**30:.1f} GiB ({per:.2f} GiB per 100k "
                             f"steps of {'x'.join(map(str, self.obs_shape))} {self.obs_dtype} observations); "
                             f"{available / 2**30:.1f} GiB is available: lower it, e.g. --set replay_capacity="
                             f"{int(0.8 * available / self.bytes_per_slot) // 1000 * 1000}")

    def _shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {"obs": (self.obs_shape, self.obs_dtype), "action": (self.action_shape, np.float32),
                "reward": ((), np.float32), "terminated": ((), np.float32), "episode_end": ((), np.bool_),
                "episode": ((), np.int64), "valid": ((), np.bool_)}

    def _grow(self, needed: int) -> None:
        """Allocate lazily (doubling) so a small run never reserves the full capacity."""
        new = min(self.capacity, max(needed, 2 * self._allocated, 1024))
        for name, (shape, dtype) in self._shapes().items():
            arr = np.zeros((new, *shape), dtype=dtype)
            if name in self.data:
                arr[: self._allocated] = self.data[name]
            self.data[name] = arr
        self._allocated = new

    def _claim(self, slot: int) -> None:
        """Slot `slot` is about to be overwritten: the transition it held (if any) is gone."""
        if slot >= self._allocated:
            self._grow(slot + 2)
        if self.data["valid"][slot]:
            self.data["valid"][slot] = False
            self.size -= 1
        if slot in self._terminal:
            self._terminal.discard(slot)
            self._terminal_array = None
        self.filled = max(self.filled, slot + 1)

    def add(self, obs, action, reward: float, next_obs, terminated: bool, truncated: bool) -> None:
        i, d = self.cursor, self.data
        if not self.open:  # an episode's first step: its slot is new
            self._claim(i)
        d["obs"][i] = obs  # within an episode the slot holds it already (the step before's next_obs)
        d["action"][i], d["reward"][i], d["terminated"][i] = action, reward, terminated
        d["episode_end"][i], d["episode"][i], d["valid"][i] = terminated or truncated, self.episodes, True
        self.size += 1
        if terminated:
            self._terminal.add(i)
            self._terminal_array = None
        j = (i + 1) % self.capacity  # the next observation: the next step's, or the episode's last
        self._claim(j)
        d["obs"][j], d["episode"][j] = next_obs, self.episodes
        if terminated or truncated:
            self._end_episode(j)
        else:
            self.cursor, self.open = j, True

    def _end_episode(self, last: int) -> None:
        """The episode's last observation is in slot `last`; the next episode starts after it."""
        self.episodes += 1
        self.cursor, self.open = (last + 1) % self.capacity, False

    def close_episode(self) -> None:
        """Mark the last stored step as an episode end (an episode cut short by a stop)."""
        if self.open:
            self.data["episode_end"][(self.cursor - 1) % self.capacity] = True
            self._end_episode(self.cursor)

    def __len__(self) -> int:
        return self.size

    def observations(self) -> np.ndarray:
        """Every stored observation (final ones included), in slot order: what the normaliser reads."""
        return self.data["obs"][: self.filled]

    def steps(self) -> dict[str, np.ndarray]:
        """Every stored transition, oldest first, with its next observation (for tests and benchmarks)."""
        order = (self.cursor + np.arange(self.filled)) % self.filled if self.filled == self.capacity else np.arange(self.filled)
        idx = order[self.data["valid"][order]]
        return {**{k: self.data[k][idx] for k in self.FIELDS}, "next_obs": self.data["obs"][(idx + 1) % self.capacity]}

    def _draw(self, n: int, rng: np.random.Generator, recent: tuple[float, int] = (0.0, 0)) -> np.ndarray:
        """`n` transition slots, uniformly (slots holding only an episode's last observation redrawn);
        with `recent` (share, window), that share of them from the newest `window` slots."""
        if not self.size:
            raise ValueError("the replay holds no transition yet")
        share, window = recent
        newest = round(n * share) if share > 0 else 0
        if not newest:  # the uniform draw alone (every update's batch, by default)
            return self._valid(n, rng, self.filled)
        return np.concatenate([self._valid(n - newest, rng, self.filled),
                               (self.cursor - 1 - self._valid(newest, rng, min(window, self.filled), back=True)) % self.filled])

    def _valid(self, n: int, rng: np.random.Generator, span: int, back: bool = False) -> np.ndarray:
        """`n` offsets into the first `span` slots (`back`: into the `span` slots behind the cursor) that
        hold a transition. Behind the cursor counts modulo `filled`: the whole ring once it has wrapped,
        and before that the slots written so far (the newest episode's last observation may sit at the
        cursor itself)."""
        out = np.empty(0, np.int64)
        while len(out) < n:
            offsets = rng.integers(0, span, size=2 * (n - len(out)) + 8)
            slots = (self.cursor - 1 - offsets) % self.filled if back else offsets
            out = np.concatenate([out, offsets[self.data["valid"][slots]]])
        return out[:n]

    def _batch(self, idx: np.ndarray, device: torch.device | str) -> dict[str, torch.Tensor]:
        d = self.data
        fields = {"obs": d["obs"][idx], "next_obs": d["obs"][(idx + 1) % self.capacity], "action": d["action"][idx],
                  "reward": d["reward"][idx], "terminated": d["terminated"][idx]}
        return {k: torch.as_tensor(fields[k]).to(device).float() for k in KEYS}

    def extra_endings(self, batch_size: int, floor: float) -> int:
        """How many endings to add to a uniform batch so that they make at least `floor` of it
        (k of batch_size + k): none while the replay's own share already reaches the floor."""
        share = len(self._terminal) / self.size if self.size else 0.0
        if not self._terminal or share >= floor:
            return 0
        return math.ceil(batch_size * (floor - share) / (1.0 - floor))

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device | str = "cpu",
               endings: int = 0, recent: tuple[float, int] = (0.0, 0)) -> dict[str, torch.Tensor]:
        """Uniform flat transitions as float tensors on `device`: obs, action, reward, next_obs, terminated
        (`recent`: a share of them from the newest steps, see `_draw`).

        With `endings` > 0 and any terminal transition stored, also `ending_next_obs`: that many
        observations where an episode ended, drawn from the endings alone, for the continue head
        only; and `ending_share`, the endings' share of the replay, so the loss can undo the
        over-representation (`losses.continue_loss`). An episode that ends once in 500 steps would
        otherwise reach the continue head a few times per thousand samples.
        """
        batch = self._batch(self._draw(batch_size, rng, recent), device)
        if endings and self._terminal:
            if self._terminal_array is None:
                self._terminal_array = np.sort(np.fromiter(self._terminal, np.int64, len(self._terminal)))  # set order aside
            picked = self._terminal_array[rng.integers(0, len(self._terminal_array), size=endings)]
            batch["ending_next_obs"] = torch.as_tensor(self.data["obs"][(picked + 1) % self.capacity]).to(device).float()
            batch["ending_share"] = torch.tensor(len(self._terminal_array) / self.size, device=device)
        return batch

    def sample_sequences(self, batch_size: int, length: int, rng: np.random.Generator,
                         device: torch.device | str = "cpu", recent: tuple[float, int] = (0.0, 0)) -> dict[str, torch.Tensor]:
        """`batch_size` runs of `length` consecutive steps: the flat batch's fields as [B, T, ...], and
        `mask` [B, T], true where step t still belongs to the episode and stored stretch of step 0.

        A run is cut at its episode's end (the end step itself is kept: its transition is real) and at
        the ring's newest step; the cut-off positions repeat the last valid step (finite numbers,
        never another episode's) and are false in `mask`, so every loss can ignore them.
        """
        start = self._draw(batch_size, rng, recent)
        idx = (start[:, None] + np.arange(length)) % self.capacity
        inside = idx < self.filled  # before the ring wraps, slots past the newest were never written
        idx = np.where(inside, idx, start[:, None])
        d = self.data
        # A transition of the same episode, every step since the start: the mask is a prefix.
        mask = np.cumprod(inside & d["valid"][idx] & (d["episode"][idx] == d["episode"][start][:, None]), 1).astype(bool)
        last_valid = mask.sum(1) - 1  # step 0 is always valid
        idx = np.where(mask, idx, idx[np.arange(batch_size), last_valid][:, None])
        batch = self._batch(idx, device)
        batch["mask"] = torch.as_tensor(mask).to(device)
        return batch

    def state_dict(self) -> dict:
        return {"size": self.size, "cursor": self.cursor, "filled": self.filled, "episodes": self.episodes,
                "open": self.open, "data": {k: v[: self.filled].copy() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "next_obs" in state["data"]:  # a checkpoint from before frames were stored once
            return self._load_transitions(state)
        n = state["filled"]
        if n:
            self._grow(n)
            for k, v in state["data"].items():
                self.data[k][:n] = v
        self.size, self.cursor, self.filled = state["size"], state["cursor"], n
        self.episodes, self.open = state["episodes"], state["open"]
        self._terminal = set(np.flatnonzero(self.data["valid"][:n] & (self.data["terminated"][:n] > 0)).tolist()) if n else set()
        self._terminal_array = None

    def _load_transitions(self, state: dict) -> None:
        """The older layout (each transition with its own next_obs), re-added oldest first."""
        d, size, cursor = state["data"], state["size"], state["cursor"]
        order = (cursor + np.arange(size)) % size  # a full ring's oldest step is at the cursor; else cursor == size
        for i in order:
            end, terminated = bool(d["episode_end"][i]), bool(d["terminated"][i])
            self.add(d["obs"][i], d["action"][i], d["reward"][i], d["next_obs"][i], terminated, end and not terminated)
        self.episodes = max(self.episodes, state["episodes"])
