"""Play a policy in a real gymnasium env: shared by the trainer's eval and `reverie eval`.

Torch-free on purpose: the same function scores the torch agent and an ONNX bundle.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np

EVAL_SEED_BASE = 1_000_000  # eval episodes use seeds disjoint from training's


def evaluate_policy(act: Callable[[np.ndarray], object], env_id: str, episodes: int, seed: int = 0,
                    env: gym.Env | None = None) -> list[float]:
    """Returns of `episodes` full episodes, each reset with its own fixed seed; `act` maps obs -> env action."""
    env = env or gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=EVAL_SEED_BASE + 1000 * seed + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns
