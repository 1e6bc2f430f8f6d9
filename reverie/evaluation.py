"""Play a policy in a real gymnasium env: shared by the trainer's eval and `reverie eval`.

Torch-free on purpose: the same function scores the torch agent and an ONNX bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

from . import envs

EVAL_SEED_BASE = 1_000_000  # eval episodes use seeds disjoint from training's


@dataclass(frozen=True)
class Episode:
    """One played episode: its return, its gamma-discounted return, and every step.

    The discounted return from the first observation is what a true critic would have
    predicted there: the trainer logs both side by side to show whether its values are honest.
    The steps are real sequences no model trained on: the trainer measures its imagination on them.
    """

    total: float
    discounted: float
    observations: np.ndarray  # [n + 1, *obs]: every observation, the last one after the last action
    actions: np.ndarray  # [n, ...]: env actions
    rewards: np.ndarray  # [n]
    terminated: bool  # the episode ended in a terminal state (not cut by a time limit)


def play_episodes(act: Callable[[np.ndarray], object], spec: envs.EnvSpec | str, episodes: int, seed: int = 0,
                  env: gym.Env | None = None, gamma: float = 1.0, start: Callable[[], object] | None = None) -> list[Episode]:
    """`episodes` full episodes, each reset with its own fixed seed; `act` maps obs -> env action.

    Without `env`, plays the env of `spec` (an `EnvSpec`, or an env id) as the agent sees it.
    `start`, when given, is called before each episode (a player with memory forgets the last one)."""
    env = env or envs.make(spec)
    played = []
    for i in range(episodes):
        if start is not None:
            start()
        obs, _ = env.reset(seed=EVAL_SEED_BASE + 1000 * seed + i)
        observations, actions, rewards = [obs], [], []
        discounted, discount, done = 0.0, 1.0, False
        while not done:
            action = act(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            discounted += discount * float(reward)
            discount *= gamma
            done = terminated or truncated
        played.append(Episode(float(sum(rewards)), discounted, np.asarray(observations),
                              np.asarray(actions), np.asarray(rewards, np.float32), bool(terminated)))
    return played


def evaluate_policy(act: Callable[[np.ndarray], object], spec: envs.EnvSpec | str, episodes: int, seed: int = 0,
                    env: gym.Env | None = None, start: Callable[[], object] | None = None) -> list[float]:
    """Returns of `episodes` full episodes (see `play_episodes`)."""
    return [e.total for e in play_episodes(act, spec, episodes, seed, env, start=start)]
