"""Action encoding, both ways, for trainer and service alike (no torch).

    agent action   a class index (Discrete), or a vector in [-1, 1] (Box): what the policy emits, what
                   replay stores and what the world-model graph takes
    env action     the index, or that vector scaled onto the env's bounds [low, high]: what env.step takes

What dynamics and reward see of an action (one-hot, or the vector) is the model's own business:
`WorldModel.encode_action`, which the exported world-model graph contains.
"""

from __future__ import annotations

import numpy as np


class ActionCoding:
    def __init__(self, discrete: bool, low=None, high=None):
        """`low`, `high`: a Box's bounds (a Discrete action needs none)."""
        self.discrete = discrete
        if not discrete:
            self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Agent actions [B] or [B, dim] (or one of them) -> env actions (int64 indices, float32 in bounds)."""
        if self.discrete:
            return np.asarray(actions, np.int64)
        unit = np.clip(np.asarray(actions, np.float32), -1.0, 1.0)
        return (self.low + (unit + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    def from_env(self, actions: np.ndarray) -> np.ndarray:
        """Env actions (already checked to lie within the bounds) -> agent actions."""
        if self.discrete:
            return np.asarray(actions, np.int64)
        return (2.0 * (np.asarray(actions, np.float64) - self.low) / (self.high - self.low) - 1.0).astype(np.float32)
