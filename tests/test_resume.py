"""Exact resume: a stopped run continues where it stopped, with no second warmup and no burst of updates."""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading

import numpy as np
import pytest
import torch

from builders import small_config
from reverie.bundle import versions
from reverie.cli import main
from reverie.signals import on_stop_signals
from reverie.runs import RunDir
from reverie.trainer.checkpoint import load_checkpoint
from reverie.trainer.loop import Trainer
from reverie.trainer.schedule import Phase

STOP, END = 200, 400


def tiny(total_steps: int, **fields):
    """Smoke sizes; the stop at STOP falls inside the transition phase (warmup 100, transition 200)."""
    return small_config(total_steps=total_steps, warmup_steps=100, transition_steps=200, checkpoint_every=100,
                        eval_every=100, eval_episodes=1, log_every=50, **fields)


def optimizer_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every tensor of the three optimizers' states, keyed by optimizer/param index/field."""
    out = {}
    for name in ("world_model_optimizer", "actor_optimizer", "critic_optimizer"):
        for index, state in getattr(trainer.agent, name).state_dict()["state"].items():
            for field, value in state.items():
                out[f"{name}/{index}/{field}"] = torch.as_tensor(value)
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at STOP (a checkpoint on disk) and the trainer object as it was at the stop."""
    run_dir = tmp_path_factory.mktemp("resume")
    trainer = Trainer(tiny(STOP), run_dir)
    trainer.run()
    return run_dir, trainer


@pytest.fixture
def stopped_copy(stopped, tmp_path):
    """A private copy of the stopped run, so each test resumes from the same stop."""
    run_dir, trainer = stopped
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, trainer


def test_stop_leaves_checkpoints(stopped):
    run_dir, trainer = stopped
    assert trainer.env_step == STOP and trainer.phase is Phase.TRANSITION
    assert RunDir(run_dir).latest_checkpoint().name == f"step_{STOP:09d}.pt"
    assert len(RunDir(run_dir).checkpoints()) == 2  # older ones are pruned (keep=2)


def test_resume_restores_position_models_optimizers_and_replay(stopped_copy):
    """A resumed trainer starts at the checkpoint's step, phase, update count, replay and optimizer moments."""
    run_dir, at_stop = stopped_copy
    saved = load_checkpoint(RunDir(run_dir).latest_checkpoint())
    resumed = Trainer(tiny(END), run_dir, resume=True)
    assert resumed.cfg.total_steps == END
    assert resumed.env_step == saved["position"]["env_step"] == STOP
    assert resumed.phase is at_stop.phase is Phase.TRANSITION
    assert resumed.updates == saved["position"]["updates"] == at_stop.updates > 0
    assert resumed.learner.credit == at_stop.learner.credit
    assert len(resumed.replay) == len(at_stop.replay) == STOP
    assert resumed.replay.observations().tobytes() == at_stop.replay.observations().tobytes()

    expected, restored = optimizer_tensors(at_stop), optimizer_tensors(resumed)
    assert expected.keys() == restored.keys()
    assert any(k.endswith("/exp_avg") for k in expected) and any(k.endswith("/step") for k in expected)
    for key in expected:
        assert torch.equal(expected[key], restored[key]), key
    for name in ("world_model_optimizer", "actor_optimizer", "critic_optimizer"):  # and the file itself
        for index, state in saved[name]["state"].items():
            for field, value in state.items():
                assert torch.equal(torch.as_tensor(value), restored[f"{name}/{index}/{field}"])
    steps = [v.item() for k, v in restored.items() if k.startswith("actor_optimizer") and k.endswith("/step")]
    assert steps and all(s > 0 for s in steps)  # the actor has been trained before the stop

    for key, value in at_stop.agent.state_dict().items():
        assert torch.equal(value, resumed.agent.state_dict()[key]), key


def test_resume_restores_every_random_state(stopped_copy, tmp_path):
    """The RNGs after a resume are those saved at the stop, so two resumed runs act alike step for step."""
    run_dir, at_stop = stopped_copy
    saved = load_checkpoint(RunDir(run_dir).latest_checkpoint())["rng"]
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin)
    resumed = Trainer(tiny(END), run_dir, resume=True)
    assert resumed.rng.bit_generator.state == saved["generator"] == at_stop.rng.bit_generator.state
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert np.random.get_state()[1].tobytes() == saved["numpy"][1].tobytes() and random.getstate() == saved["python"]
    resumed.run()
    other = Trainer(tiny(END), twin, resume=True)
    other.run()
    ours, theirs = resumed.replay.steps(), other.replay.steps()
    for field in ("action", "obs", "reward", "next_obs"):
        assert ours[field][STOP:END].tobytes() == theirs[field][STOP:END].tobytes(), field
    # ...and they are the draws that followed the stop: a fresh generator from the seed would differ.
    assert np.random.default_rng(resumed.cfg.seed).bit_generator.state != saved["generator"]


def test_resume_applies_and_logs_given_settings_and_refuses_the_fixed_ones(stopped_copy, caplog, capsys):
    """--set with --resume is not dropped: a tunable key changes the saved config (logged); a key the
    checkpoint's networks depend on is refused with a message that names it, and nothing is written."""
    import json

    run_dir, _ = stopped_copy
    saved = (run_dir / "config.json").read_text()
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--set", "hidden_dim=64", "--set", "actor_lr=1e-4"]) == 2
    assert "--resume cannot change hidden_dim" in capsys.readouterr().err
    assert (run_dir / "config.json").read_text() == saved
    with caplog.at_level("INFO", logger="reverie.trainer"):
        resumed = Trainer(tiny(END).model_copy(update={"actor_lr": 1e-4, "eval_every": 50}), run_dir, resume=True,
                          given=frozenset({"actor_lr", "eval_every", "total_steps"}))
    assert resumed.cfg.actor_lr == 1e-4 and resumed.cfg.eval_every == 50 and resumed.cfg.total_steps == END
    assert resumed.agent.actor_optimizer.param_groups[0]["lr"] == 1e-4
    assert json.loads((run_dir / "config.json").read_text())["actor_lr"] == 1e-4
    assert "resume: actor_lr 0.0003 -> 0.0001" in caplog.text
    untouched = Trainer(tiny(END, actor_lr=1e-4), run_dir, resume=True)  # nothing given: the saved values stand
    assert untouched.cfg.actor_lr == 1e-4 and untouched.cfg.eval_every == 50


def test_resumed_run_continues_without_warmup_or_update_burst(stopped_copy):
    """The resumed run reaches END, pays replay_ratio updates per new step (no catch-up), and never re-warms."""
    run_dir, at_stop = stopped_copy
    resumed = Trainer(tiny(END), run_dir, resume=True)
    resumed.run()
    assert resumed.env_step == END
    expected_updates = resumed.cfg.replay_ratio * (END - STOP)
    assert abs((resumed.updates - at_stop.updates) - expected_updates) <= 2

    rows = RunDir(run_dir).metrics()
    steps = [r["env_step"] for r in rows]
    assert steps == sorted(set(steps)), "env_step must keep increasing across the resume"
    after = [r for r in rows if r["env_step"] > STOP]
    assert after and after[-1]["env_step"] == END
    assert all(r["phase"] != "warmup" for r in after)
    assert after[0]["updates"] >= at_stop.updates
    assert after[0]["updates"] - at_stop.updates <= resumed.cfg.replay_ratio * (after[0]["env_step"] - STOP) + 1
    assert any("actor_loss" in r for r in after)
    assert RunDir(run_dir).latest_checkpoint().name == f"step_{END:09d}.pt"


def test_interrupt_saves_a_checkpoint_that_resumes(tmp_path):
    """Ctrl-C / SIGTERM (a KeyboardInterrupt) between checkpoints still leaves a checkpoint at the exact step."""
    def interrupt():
        if trainer.env_step == 150:  # the signal arrives at step 150, between two checkpoints
            raise KeyboardInterrupt

    trainer = Trainer(tiny(END, export_every=150), tmp_path, export=True)
    trainer.publish_bundle = interrupt
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert trainer.env_step == 150
    assert RunDir(tmp_path).latest_checkpoint().name == f"step_{150:09d}.pt"
    resumed = Trainer(tiny(END), tmp_path, resume=True)
    assert (resumed.env_step, resumed.updates) == (150, trainer.updates)
    # The episode cut by the stop is closed, so the next stored step starts a new episode.
    assert resumed.replay.steps()["episode_end"][149]


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
def test_a_stop_request_finishes_the_step_checkpoints_and_returns(tmp_path):
    """SIGTERM in `reverie train` sets `stop`: the export under way completes, then a checkpoint at that step."""
    trainer = Trainer(tiny(END, export_every=150), tmp_path, export=True)
    publish = trainer.publish_bundle

    def publish_then_stop():
        published = publish()
        if trainer.env_step == 150:  # the signal arrives during this export
            trainer.stop.set()
        return published

    trainer.publish_bundle = publish_then_stop
    trainer.run()
    assert trainer.env_step == 150
    assert RunDir(tmp_path).latest_checkpoint().name == f"step_{150:09d}.pt"
    assert versions(tmp_path / "export") == [1, 2]  # at start and at 150, complete
    resumed = Trainer(tiny(END), tmp_path, resume=True)
    assert (resumed.env_step, resumed.updates) == (150, trainer.updates)


def test_stop_signals_ask_rather_than_raise():
    """The handler only sets the request: nothing is raised into whatever code the signal lands in."""
    stop = threading.Event()
    on_stop_signals(stop.set)
    for signum in (signal.SIGTERM, signal.SIGINT):
        stop.clear()
        os.kill(os.getpid(), signum)
        assert stop.wait(1), signal.Signals(signum).name


def test_cli_resume_without_checkpoint_exits_2(tmp_path, capsys):
    """`reverie train --resume` on an empty run dir fails cleanly with exit code 2 and says why."""
    run_dir = tmp_path / "empty"
    code = main(["train", "--run-dir", str(run_dir), "--resume", "--preset", "smoke", "--set", "threads=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "reverie train" in err
    assert not (run_dir / "config.json").exists()


def test_a_fresh_run_never_mixes_with_an_old_one_in_the_same_dir(tmp_path):
    """Starting over (no --resume) in a used dir is refused, and the old run stays resumable as it was."""
    Trainer(tiny(STOP), tmp_path).run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(tiny(100, seed=5), tmp_path)
    resumed = Trainer(tiny(END), tmp_path, resume=True)
    assert resumed.cfg.seed == tiny(STOP).seed
    assert resumed.env_step == STOP
    assert main(["train", "--run-dir", str(tmp_path), "--steps", "10"]) == 2
