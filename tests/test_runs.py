"""The run directory's shared layout: the trainer publishes its progress, the service reads it back."""

from __future__ import annotations

from builders import small_config
from reverie.runs import STATUS_KEYS, RunDir
from reverie.trainer.loop import Trainer


def test_status_carries_the_last_evaluation_forward(tmp_path):
    assert RunDir(tmp_path).status() is None
    fidelity = {"env_step": 500, "state_error": [0.1, 0.2], "obs_error": [0.01, 0.03], "reward_error": [0.0, 0.1],
                "continue_accuracy": [1.0, 0.9]}
    RunDir(tmp_path).publish_status({"env_step": 500, "phase": "full", "updates": 9, "episodes": 3, "wall_s": 1.0,
                              "eval_return": 42.0, "failure_modes": ["critic_divergence"], "dynamics_loss": 0.1}, fidelity,
                   phases={"transition": 100, "full": 300})
    RunDir(tmp_path).publish_status({"env_step": 750, "phase": "full", "updates": 12, "episodes": 4, "wall_s": 2.0,
                              "failure_modes": []})
    status = RunDir(tmp_path).status()
    assert tuple(status) == STATUS_KEYS  # progress only: the loss columns stay in the trainer's log
    assert status["env_step"] == 750 and status["eval_return"] == 42.0 and status["eval_env_step"] == 500
    assert status["failure_modes"] == [] and status["imagination_fidelity"] == fidelity
    assert status["phases"] == {"transition": 100, "full": 300}  # the schedule's boundaries, carried forward
    finding = {"env_step": 1000, "evidence": {"critic_value_mean": [1.0, 9.0]}, "set_lines": ["--set target_critic=true"]}
    RunDir(tmp_path).publish_status({"env_step": 1000, "failure_modes": ["critic_divergence"]}, findings={"critic_divergence": finding})
    RunDir(tmp_path).publish_status({"env_step": 1250, "failure_modes": ["entropy_collapse"]},
                   findings={"entropy_collapse": {**finding, "env_step": 1250}})
    RunDir(tmp_path).publish_status({"env_step": 1500, "failure_modes": []})
    assert RunDir(tmp_path).status()["diagnosis"] == {"critic_divergence": finding,  # each mode's latest firing, kept
                                                  "entropy_collapse": {**finding, "env_step": 1250}}
    (tmp_path / "status.json").write_text("{half a file")
    assert RunDir(tmp_path).status() is None  # never raises into a request


def test_a_training_run_publishes_what_the_service_reads(tmp_path):
    """The trainer's rows and the service's view agree, from the run dir, its export folder or a bundle."""
    cfg = small_config(total_steps=300, warmup_steps=100, transition_steps=100, log_every=50, eval_every=200,
                       eval_episodes=1, checkpoint_every=10_000)
    Trainer(cfg, tmp_path).run()
    rows = RunDir(tmp_path).metrics()
    status = RunDir(tmp_path).status()
    assert status["env_step"] == rows[-1]["env_step"] == 300 and status["updates"] == rows[-1]["updates"]
    evaluated = [r for r in rows if "eval_return" in r]
    assert status["eval_env_step"] == evaluated[-1]["env_step"] and status["eval_return"] == evaluated[-1]["eval_return"]
    fired = {mode: r["env_step"] for r in rows for mode in r["failure_modes"]}  # each mode's last firing
    assert {mode: found["env_step"] for mode, found in status["diagnosis"].items()} == fired
    assert all(found["evidence"] and isinstance(found["set_lines"], list) for found in status["diagnosis"].values())
    bundle = tmp_path / "export" / "v000001"  # where `reverie serve --models` may point
    bundle.mkdir(parents=True)
    assert RunDir.behind(tmp_path).path == RunDir.behind(tmp_path / "export").path == RunDir.behind(bundle).path == tmp_path
    assert RunDir.behind(tmp_path / "nowhere" / "at" / "all") is None
