"""Diagram 5: the phases of training and what each updates, as a function of the env step."""

from __future__ import annotations

from enum import Enum

from .config import Config, UpdateCounts


class Phase(str, Enum):
    WARMUP = "warmup"  # world model only, random exploration
    TRANSITION = "transition"  # actor and critic on, critic_real_mix annealed 1.0 -> 0.0
    FULL = "full"  # joint optimisation


class Schedule:
    def __init__(self, cfg: Config):
        self.warmup_end = cfg.warmup_steps
        self.transition_end = cfg.warmup_steps + cfg.transition_steps
        self.update_schedule = cfg.update_schedule
        self.final_mix = cfg.critic_real_mix_final

    def phase(self, env_step: int) -> Phase:
        if env_step < self.warmup_end:
            return Phase.WARMUP
        if env_step < self.transition_end:
            return Phase.TRANSITION
        return Phase.FULL

    def explores_randomly(self, env_step: int) -> bool:
        return self.phase(env_step) is Phase.WARMUP

    def critic_real_mix(self, env_step: int) -> float:
        """1.0 until the transition starts, linearly to `critic_real_mix_final` at its end, that afterwards."""
        if env_step < self.warmup_end:
            return 1.0
        if env_step >= self.transition_end:
            return self.final_mix
        progress = (env_step - self.warmup_end) / (self.transition_end - self.warmup_end)
        return 1.0 - (1.0 - self.final_mix) * progress

    def updates(self, env_step: int) -> UpdateCounts:
        """Updates per batch for each optimizer; actor and critic are forced to 0 during warmup."""
        counts = [c for c in self.update_schedule if c.from_step <= env_step][-1]
        if self.phase(env_step) is Phase.WARMUP:
            return counts.model_copy(update={"actor": 0, "critic": 0})
        return counts
