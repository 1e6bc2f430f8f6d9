"""Diagram 5's phases: what is updated when, and the critic's real-data blend across the transition."""

from __future__ import annotations

import pytest
import torch

from builders import small_config
from reverie.trainer.config import UpdateCounts
from reverie.trainer.loop import Trainer
from reverie.runs import RunDir
from reverie.trainer.schedule import Phase, Schedule

WARMUP, TRANSITION = 100, 200


@pytest.fixture
def schedule() -> Schedule:
    cfg = small_config(warmup_steps=WARMUP, transition_steps=TRANSITION, critic_real_mix_final=0.0, update_schedule=[
        UpdateCounts(from_step=0, world_model=1, actor=1, critic=1),
        UpdateCounts(from_step=50, world_model=3, actor=2, critic=2),
        UpdateCounts(from_step=250, world_model=2, actor=3, critic=4),
    ])
    return Schedule(cfg)


def test_phases_switch_at_configured_steps(schedule):
    """warmup until warmup_steps, transition for transition_steps more, then full."""
    assert schedule.phase(0) is Phase.WARMUP
    assert schedule.phase(WARMUP - 1) is Phase.WARMUP
    assert schedule.phase(WARMUP) is Phase.TRANSITION
    assert schedule.phase(WARMUP + TRANSITION - 1) is Phase.TRANSITION
    assert schedule.phase(WARMUP + TRANSITION) is Phase.FULL
    assert schedule.phase(10**6) is Phase.FULL
    assert schedule.explores_randomly(WARMUP - 1) and not schedule.explores_randomly(WARMUP)


def test_no_actor_or_critic_updates_in_warmup(schedule):
    """Warmup trains the world model only, even where update_schedule asks for actor/critic steps."""
    for step in (0, 49, 50, WARMUP - 1):
        counts = schedule.updates(step)
        assert (counts.actor, counts.critic) == (0, 0)
    assert schedule.updates(0).world_model == 1
    assert schedule.updates(60).world_model == 3  # the from_step=50 entry already applies to the world model


def test_update_schedule_entries_take_effect_at_from_step(schedule):
    """Counts after warmup are the configured ones, switching exactly at each entry's from_step."""
    as_tuple = lambda c: (c.world_model, c.actor, c.critic)  # noqa: E731
    assert as_tuple(schedule.updates(WARMUP)) == (3, 2, 2)
    assert as_tuple(schedule.updates(249)) == (3, 2, 2)
    assert as_tuple(schedule.updates(250)) == (2, 3, 4)
    assert as_tuple(schedule.updates(5000)) == (2, 3, 4)


def test_default_schedule_counts_after_warmup():
    cfg = small_config(warmup_steps=10, transition_steps=10)
    counts = Schedule(cfg).updates(10)
    assert (counts.world_model, counts.actor, counts.critic) == (1, 1, 1)


def test_critic_real_mix_anneals_linearly_through_transition(schedule):
    """1.0 in warmup, 1.0 -> 0.0 linearly over the transition (0.5 at its midpoint), 0.0 after."""
    assert schedule.critic_real_mix(0) == 1.0
    assert schedule.critic_real_mix(WARMUP - 1) == 1.0
    assert schedule.critic_real_mix(WARMUP) == 1.0
    assert schedule.critic_real_mix(WARMUP + TRANSITION // 2) == pytest.approx(0.5)
    assert schedule.critic_real_mix(WARMUP + TRANSITION // 4) == pytest.approx(0.75)
    assert schedule.critic_real_mix(WARMUP + TRANSITION) == 0.0
    assert schedule.critic_real_mix(10**6) == 0.0
    mixes = [schedule.critic_real_mix(s) for s in range(0, WARMUP + TRANSITION + 10)]
    assert all(b <= a for a, b in zip(mixes, mixes[1:]))


def test_critic_real_mix_settles_at_its_final_value():
    """With critic_real_mix_final, the transition anneals 1.0 -> that value and it holds for good."""
    s = Schedule(small_config(warmup_steps=WARMUP, transition_steps=TRANSITION, critic_real_mix_final=0.2))
    assert s.critic_real_mix(WARMUP) == 1.0
    assert s.critic_real_mix(WARMUP + TRANSITION // 2) == pytest.approx(0.6)
    assert s.critic_real_mix(WARMUP + TRANSITION) == pytest.approx(0.2)
    assert s.critic_real_mix(10**6) == pytest.approx(0.2)


def test_zero_length_transition_goes_straight_to_full():
    """transition_steps=0 must not divide by zero: the mix drops from 1.0 to its final value at the warmup's end."""
    s = Schedule(small_config(warmup_steps=20, transition_steps=0, critic_real_mix_final=0.1))
    assert s.phase(20) is Phase.FULL
    assert s.critic_real_mix(19) == 1.0 and s.critic_real_mix(20) == pytest.approx(0.1)


def test_trainer_makes_no_actor_updates_during_warmup(tmp_path):
    """End to end: warmup rows carry world-model metrics but no actor/critic ones; transition rows carry both."""
    cfg = small_config(total_steps=175, warmup_steps=100, transition_steps=100, log_every=25,
                       eval_every=10_000, checkpoint_every=10_000)
    trainer = Trainer(cfg, tmp_path)
    trainer.run()
    rows = RunDir(tmp_path).metrics()
    warmup = [r for r in rows if r["phase"] == "warmup" and r["env_step"] > cfg.learning_starts]
    # A row averages the updates of the log_every steps before it; take the rows wholly inside transition.
    transition = [r for r in rows if r["phase"] == "transition" and r["env_step"] - cfg.log_every >= cfg.warmup_steps]
    assert warmup and transition
    for row in warmup:
        assert "dynamics_loss" in row, row
        assert "actor_loss" not in row and "critic_loss" not in row, row
    for row in transition:
        assert "actor_loss" in row and "critic_loss" in row, row
        assert 0.0 < row["critic_real_mix"] <= 1.0


def test_policy_is_untouched_by_a_warmup_only_run(tmp_path):
    """A run that ends with warmup leaves the policy and critic at their (seeded) initial values."""
    cfg = small_config(total_steps=100, warmup_steps=100, transition_steps=100, eval_every=10_000,
                       checkpoint_every=10_000)
    fresh = Trainer(cfg, tmp_path / "fresh").agent
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    assert trainer.updates > 0
    trained = trainer.agent
    for module in ("policy", "value", "target_value"):
        for a, b in zip(getattr(fresh, module).parameters(), getattr(trained, module).parameters()):
            assert torch.equal(a, b), module
    assert not all(torch.equal(a, b) for a, b in zip(fresh.world_model.parameters(),
                                                       trained.world_model.parameters()))


def test_the_trainer_drives_the_parts_it_is_given(tmp_path):
    """Parts passed in are the ones used: here an env whose episodes are cut at 20 steps, and a replay
    that already holds a transition; the checkpoint is those parts' own state_dicts."""
    import gymnasium as gym
    import numpy as np

    from reverie.trainer.checkpoint import load_checkpoint
    from reverie.trainer.parts import Parts

    cfg = small_config(total_steps=100, warmup_steps=50, transition_steps=50, eval_every=10_000, checkpoint_every=100)
    parts = Parts.build(cfg, RunDir(tmp_path))
    parts.env = gym.make("CartPole-v1", max_episode_steps=20)
    parts.replay.add(np.full(4, 7.0, np.float32), np.asarray(1), 1.0, np.zeros(4, np.float32), False, True)
    trainer = Trainer(cfg, tmp_path, parts=parts)
    trainer.run()
    assert trainer.env is parts.env and trainer.replay is parts.replay and len(parts.replay) == 101
    lengths = np.bincount(parts.replay.steps()["episode"][1:])
    assert lengths[lengths > 0].max() <= 20
    saved = load_checkpoint(RunDir(tmp_path).latest_checkpoint())
    assert {"agent", "world_model_optimizer", "actor_optimizer", "critic_optimizer", "replay"} <= saved.keys()
    assert saved["replay"]["data"]["obs"][0].tolist() == [7.0] * 4
