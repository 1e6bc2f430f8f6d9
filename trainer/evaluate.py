"""When a run evaluates and what it found. In the trainer's own env: the policy's deterministic
episodes, what the critic said of their start states beside the discounted return that followed, and
how well the world model imagines those held-out episodes (`fidelity`). In a world without an env: the
returns of its clients' evaluation sessions, per version."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from reverie.bundle import record_evaluation
from reverie.evaluation import play_episodes

from .agent import Agent, EpisodePlayer
from .feed import ClientFeed
from .fidelity import imagination_fidelity
from .release import Releases

log = logging.getLogger("reverie.trainer")


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
    if episodes[0].observations.ndim == 2:  # vectors: where each terminal ending happened, to tell endings apart
        row["eval_terminal_obs"] = [[round(float(v), 4) for v in e.observations[-1]] for e in episodes if e.terminated]
    return Evaluation(float(np.mean([e.total for e in episodes])), row,
                      None if fidelity is None else {"env_step": env_step, **fidelity})


class Evaluations:
    """The run's evaluations: the env's every `eval_every` steps, or a client world's (`_client`). One
    that reaches `target_return` ends the run (`reached`)."""

    def __init__(self, agent: Agent, eval_env: gym.Env | None, feed: ClientFeed | None, releases: Releases):
        self.agent, self.cfg, self.eval_env, self.feed, self.releases = agent, agent.cfg, eval_env, feed, releases
        self.last: float | None = None  # the last evaluation's mean return
        self.reached = False
        self.fidelity: dict | None = None  # the last env evaluation's imagination fidelity, per imagined step
        self.client_returns: dict[int, list[float]] = {}  # a client world's evaluation returns, by model version

    def due(self, env_step: int) -> dict[str, float] | None:
        """The evaluation row this step made, or None."""
        if self.eval_env is None:
            row = self._client()
        elif env_step % self.cfg.eval_every == 0:
            result = evaluate(self.agent, self.eval_env, env_step)
            self.last, row = result.mean_return, result.row
            self.fidelity = result.fidelity if result.fidelity is not None else self.fidelity
        else:
            return None
        target = self.cfg.target_return
        if row is not None and target is not None and self.last >= target:
            log.info("eval return %.1f reached target_return %.1f at env step %d: stopping", self.last, target, env_step)
            self.reached = True
        return row

    def _client(self) -> dict[str, float] | None:
        """A version's evaluation is the mean return of its first `client_eval_episodes`
        evaluation-session episodes (deterministic, that version throughout). The row of the newest
        version completed by the episodes that finished since the last call, or None."""
        completed = None
        for version, total in self.feed.take_evaluations():
            returns = self.client_returns.setdefault(version, [])
            if len(returns) < self.cfg.client_eval_episodes:
                returns.append(total)
                if len(returns) == self.cfg.client_eval_episodes:
                    completed = version
                    record_evaluation(self.releases.export_dir, version, float(np.mean(returns)),
                                      self.cfg.promotion_tolerance)
                    self.releases.changed()
        if completed is None:
            return None
        self.last = float(np.mean(self.client_returns[completed]))
        return {"eval_version": completed, "eval_episodes": len(self.client_returns[completed])}
