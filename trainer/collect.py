"""Where the replay's transitions come from: the trainer's own env, played by the exploring policy,
or the served clients' experience log (`feed.ClientFeed`), or both (a client's run goes in between
two of the env's episodes). The loop only asks for the next transition."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from .agent import Agent, Window
from .config import Config
from .feed import ClientFeed, Transition
from .schedule import Schedule

POLL_EVERY = 64  # source=clients: steps between reads of the log while released steps are still waiting


class Collector:
    """The next transition for the replay, and the episodes the env's ones made (`episodes`, and the
    returns of those finished since the last `pop_returns`)."""

    def __init__(self, cfg: Config, agent: Agent, schedule: Schedule, rng: np.random.Generator,
                 env: gym.Env | None, feed: ClientFeed | None):
        self.cfg, self.agent, self.schedule, self.rng, self.env, self.feed = cfg, agent, schedule, rng, env, feed
        self.window = Window(agent.world_model, cfg.history_length)  # the current episode's, in sequence mode
        self.client_run = False  # a client's run is being added (source=both: the env waits for its end)
        self.episodes = 0
        self.returns: list[float] = []
        self.obs: np.ndarray | None = None

    def next(self, env_step: int, model_version: int, room: bool) -> Transition | None:
        """A client's transition or the env's; None when source=clients and the log holds nothing new.
        `room`: the replay may take a client's run now (an env episode is not half-stored)."""
        feed = self.feed
        if feed is not None and (self.env is None or self.client_run or room):
            # Reading on while steps wait measures the backlog (and finds evaluations); past twice
            # `client_backlog` the log, which is durable, holds the rest, and memory stays bounded.
            if not feed.ready or (env_step % POLL_EVERY == 0 and len(feed.ready) < 2 * self.cfg.client_backlog):
                feed.poll(model_version)
            step = feed.take()
            if step is not None:
                self.client_run = not (step.terminated or step.truncated)
                return step
        if self.env is None:
            return None
        return self._env_step(env_step)

    def _env_step(self, env_step: int) -> Transition:
        if self.obs is None:
            self._reset()
        explores = self.schedule.explores_randomly(env_step) or self.rng.random() < self.cfg.epsilon
        action = self.agent.step(self.obs, self.window, deterministic=False,
                                 action=self._random_action() if explores else None)
        next_obs, reward, terminated, truncated, _ = self.env.step(self.agent.space.to_env_action(action))
        step = Transition(self.obs, action, float(reward), next_obs, terminated, truncated, lag=0, source="env")
        self.episode_return += float(reward)
        self.obs = next_obs
        if terminated or truncated:
            self.episodes += 1
            self.returns.append(self.episode_return)
            self._reset()
        return step

    def _reset(self) -> None:
        """A new episode, seeded by its number; the agent's memory starts empty."""
        self.window.clear()
        self.obs, _ = self.env.reset(seed=self.cfg.seed * 100_003 + self.episodes)
        self.env.action_space.seed(self.cfg.seed * 100_003 + self.episodes)
        self.episode_return = 0.0

    def _random_action(self) -> np.ndarray:
        space = self.agent.space
        if space.discrete:
            return np.asarray(self.rng.integers(space.action_dim))
        return self.rng.uniform(-1.0, 1.0, space.action_dim).astype(np.float32)

    def pop_returns(self) -> list[float]:
        returns, self.returns = self.returns, []
        return returns
