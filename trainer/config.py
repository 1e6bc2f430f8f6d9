"""One source of defaults for the trainer; presets are small named overrides of it.

Every knob the seed names (sizes, learning rates, schedule boundaries, the remedies of
diagram 6) lives here, so a run is fully described by one `Config` saved beside it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class UpdateCounts(BaseModel):
    """Diagram 5's multi-update schedule: from `from_step` on, updates per batch for each optimizer."""

    model_config = ConfigDict(extra="forbid")

    from_step: int = Field(0, ge=0)
    world_model: int = Field(1, ge=0)
    actor: int = Field(1, ge=0)
    critic: int = Field(1, ge=0)


class Config(BaseModel):
    """The trainer's whole configuration. Field names are the keys of `--set key=value`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # run
    env_id: str = "CartPole-v1"
    seed: int = 0
    total_steps: int = Field(50_000, ge=1)
    threads: int = Field(2, ge=1, description="torch intra-op threads")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the networks train: auto takes CUDA when there is one, else the CPU")

    # component sizes (diagram 1)
    feature_dim: int = Field(256, ge=1)
    state_dim: int = Field(64, ge=1)
    hidden_dim: int = Field(128, ge=1)
    hidden_layers: int = Field(2, ge=1)
    cnn_depth: int = Field(32, ge=1)

    # world model (diagram 2)
    dynamics_weight: float = Field(1.0, ge=0)
    reward_weight: float = Field(1.0, ge=0)
    continue_weight: float = Field(1.0, ge=0)
    decoder_weight: float = Field(1.0, ge=0)
    dynamics_std: float = Field(0.1, gt=0, description="std of the next-state Normal")
    world_model_lr: float = Field(1e-3, gt=0)
    symlog: bool = Field(True, description="reward and value heads predict in symlog space")

    # imagination, actor, critic (diagrams 2 and 3)
    horizon: int = Field(15, ge=1)
    gamma: float = Field(0.99, gt=0, le=1)
    lambda_: float = Field(0.95, ge=0, le=1)
    actor_lr: float = Field(3e-4, gt=0)
    critic_lr: float = Field(3e-4, gt=0)
    entropy_coef: float = Field(3e-4, ge=0)
    return_norm: bool = Field(True, description="scale actor returns by their 5-95 percentile spread")
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(128, ge=1)

    # schedule (diagram 5)
    warmup_steps: int = Field(1000, ge=0)
    transition_steps: int = Field(1000, ge=0)
    replay_ratio: float = Field(2.0, gt=0, description="update rounds per env step")
    learning_starts: int = Field(128, ge=1, description="env steps before the first update")
    update_schedule: list[UpdateCounts] = Field(default_factory=lambda: [UpdateCounts()])

    # remedies of diagram 6
    orthogonal_init: bool = True
    obs_norm: bool = True
    dynamics_ensemble: int = Field(1, ge=1)
    target_critic: bool = True
    target_critic_tau: float = Field(0.02, gt=0, le=1)
    critic_target_clip: float | None = Field(None, gt=0)
    return_bounds: bool = Field(True, description="hold returns and bootstrap values inside what the rewards seen allow")
    adaptive_entropy: bool = False
    target_entropy: float | None = None
    epsilon: float = Field(0.0, ge=0, le=1, description="epsilon-greedy exploration after warmup")

    # replay, logging, evaluation, checkpoints
    replay_capacity: int = Field(1_000_000, ge=1)
    log_every: int = Field(250, ge=1)
    eval_every: int = Field(500, ge=1)
    eval_episodes: int = Field(10, ge=1)
    target_return: float | None = Field(None, description="stop once an evaluation reaches this return")
    checkpoint_every: int = Field(2500, ge=1)
    checkpoint_replay: bool = True
    export_every: int = Field(1000, ge=1)
    export_keep: int = Field(5, ge=1)
    diagnostics_window: int = Field(8, ge=3)

    @field_validator("update_schedule")
    @classmethod
    def _sorted_from_zero(cls, value: list[UpdateCounts]) -> list[UpdateCounts]:
        if not value or value[0].from_step != 0:
            raise ValueError("update_schedule must start with an entry at from_step 0")
        if any(b.from_step <= a.from_step for a, b in zip(value, value[1:])):
            raise ValueError("update_schedule entries must have increasing from_step")
        return value


PRESETS: dict[str, dict[str, Any]] = {
    "cartpole": {"env_id": "CartPole-v1", "warmup_steps": 500, "transition_steps": 500, "total_steps": 2500,
                 "eval_every": 250},
    "pendulum": {"env_id": "Pendulum-v1", "warmup_steps": 1000, "transition_steps": 1000, "total_steps": 15000,
                 "eval_every": 1000, "replay_ratio": 1.0},
    "smoke": {"hidden_dim": 32, "feature_dim": 32, "state_dim": 16, "batch_size": 16, "horizon": 5,
              "warmup_steps": 100, "transition_steps": 100, "learning_starts": 32, "replay_ratio": 0.25,
              "log_every": 50, "eval_every": 100, "eval_episodes": 2, "checkpoint_every": 100,
              "export_every": 100},
}


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` -> (key, value); the value is read as JSON when it parses, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not of the form key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_config(preset: str | None = None, overrides: list[str] | None = None, **fields: Any) -> Config:
    """Defaults, then the preset, then `--set` overrides, then explicit fields (CLI flags)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
        values.update(PRESETS[preset])
    for item in overrides or []:
        key, value = parse_override(item)
        if key not in Config.model_fields:
            raise ValueError(f"unknown config key {key!r}")
        values[key] = value
    values.update({k: v for k, v in fields.items() if v is not None})
    return Config(**values)
