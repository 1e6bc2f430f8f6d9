"""An evaluation in the trainer's own env: the policy's deterministic episodes, what the critic said
of their start states beside the discounted return that followed, and how well the world model
imagines those held-out episodes (`fidelity`)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from reverie.evaluation import play_episodes

from .agent import Agent, EpisodePlayer
from .fidelity import imagination_fidelity


@dataclass
class Evaluation:
    """An evaluation in the env: its mean return, what its metric row carries, and imagination's fidelity."""

    mean_return: float
    row: dict[str, float]  # what the metric row carries beside eval_return
    fidelity: dict | None  # per imagined step, for the status and the curves (None: nothing to measure)


def evaluate(agent: Agent, eval_env: gym.Env, env_step: int) -> Evaluation:
    cfg = agent.cfg
    player = EpisodePlayer(agent, deterministic=True)
    episodes = play_episodes(player, cfg.env_spec, cfg.eval_episodes, cfg.seed, eval_env, cfg.gamma, start=player.reset)
    with torch.no_grad():
        first = torch.as_tensor(np.stack([e.observations[0] for e in episodes]), dtype=torch.float32, device=agent.device)
        values = agent.critic_values(agent.world_model.first_belief(first))  # as served
    # Its own generator: measuring the imagination must not move the training's random stream.
    fidelity = imagination_fidelity(agent.world_model, agent.space, episodes, cfg.horizon,
                                    np.random.default_rng(env_step), agent.device)
    means = {f"imagination_{key}": float(np.mean(steps)) for key, steps in (fidelity or {}).items()}
    row = {"eval_value": float(values.mean()),
           "eval_discounted_return": float(np.mean([e.discounted for e in episodes])),
           # Episodes that ended in a terminal state, not by the time limit (CartPole: the pole or the track's end).
           "eval_terminated": float(sum(e.terminated for e in episodes)), **means}
    return Evaluation(float(np.mean([e.total for e in episodes])), row,
                      None if fidelity is None else {"env_step": env_step, **fidelity})
