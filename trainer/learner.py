"""Update rounds and what pays for them: each stored step buys `replay_ratio` rounds from a running
credit (part of the checkpoint, so a resumed run neither repeats warmup nor catches up on missed
updates); while clients are slower than the trainer, idle rounds go on up to `idle_replay_ratio`
per stored step. A round is one batch from the replay through `Agent.update`."""

from __future__ import annotations

import numpy as np
import torch

from .agent import Agent
from .config import Config, UpdateCounts
from .metrics import MetricAverager
from .replay import Replay
from .schedule import Schedule


class Learner:
    def __init__(self, cfg: Config, agent: Agent, replay: Replay, schedule: Schedule, rng: np.random.Generator):
        self.cfg, self.agent, self.replay, self.schedule, self.rng = cfg, agent, replay, schedule, rng
        self.updates = 0
        self.credit = 0.0
        self.averager = MetricAverager()  # the rounds' metrics since the last row

    def pay(self, env_step: int) -> None:
        """The rounds the step just stored pays for (none before `learning_starts`, which a resume
        without the replay also waits out)."""
        if len(self.replay) < self.cfg.learning_starts:
            return
        self.credit += self.cfg.replay_ratio
        counts, mix = self.schedule.updates(env_step), self.schedule.critic_real_mix(env_step)
        while self.credit >= 1.0:
            self.credit -= 1.0
            self.round(counts, mix)

    def idle(self, env_step: int) -> bool:
        """No client step waits: one more round, while the rounds stay within `idle_replay_ratio` per
        stored step; False when there is nothing to do but wait."""
        cfg = self.cfg
        if (len(self.replay) < cfg.learning_starts or env_step < cfg.learning_starts
                or self.updates >= cfg.idle_replay_ratio * env_step):
            return False
        self.round(self.schedule.updates(env_step), self.schedule.critic_real_mix(env_step))
        return True

    def round(self, counts: UpdateCounts, mix: float) -> None:
        """One update round: its batch, and the replayed sequences of the critic's real targets when
        they are lambda-returns (`critic_real_length` > 1) and weigh anything (`mix` > 0)."""
        cfg, batch = self.cfg, self.sample_batch()
        real = None
        if mix > 0 and cfg.critic_real_length > 1:
            real = self.replay.sample_sequences(max(1, cfg.batch_size // cfg.critic_real_length),
                                                cfg.critic_real_length, self.rng, self.agent.device)
        self.averager.add(self.agent.update(batch, counts, mix, real))
        self.updates += 1

    def sample_batch(self) -> dict[str, torch.Tensor]:
        """One round's batch: batch_size // sequence_length sequences in sequence mode, else batch_size
        transitions (with extra endings for the continue head when `continue_endings` asks); a
        `recent_share` of them from the newest `recent_window` steps."""
        cfg, device, recent = self.cfg, self.agent.device, (self.cfg.recent_share, self.cfg.recent_window)
        if cfg.sequence_mode:
            return self.replay.sample_sequences(cfg.sequences_per_batch, cfg.sequence_length, self.rng, device, recent)
        endings = self.replay.extra_endings(cfg.batch_size, cfg.continue_endings)
        return self.replay.sample(cfg.batch_size, self.rng, device, endings, recent)
