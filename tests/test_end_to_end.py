"""A short real CartPole run through the `reverie train` CLI: it learns, and it leaves every artefact behind.

The run (~30 s of one CPU core) uses the cartpole preset with smaller networks and a shorter
warmup/transition. The first evaluation (step 250) scores the untrained policy; by step 1000
the agent has learnt in imagination and the last evaluation is well above it. Tried on seeds
0-4, this configuration ended above its first evaluation every time (first -> last: 23.8 -> 121.4,
9.6 -> 102.2, 10.2 -> 94.6, 9.0 -> 22.0, 13.4 -> 82.4); the test uses seed 0.
"""

from __future__ import annotations

import pytest

from reverie.cli import main
from reverie.runs import latest_checkpoint
from trainer.metrics import read_metrics

pytestmark = pytest.mark.slow  # a 1,000-step training run with exports

STEPS = 1000
ARGS = ["--preset", "cartpole", "--steps", str(STEPS), "--seed", "0",
        "--set", "hidden_dim=64", "--set", "batch_size=64", "--set", "threads=1",
        "--set", "warmup_steps=300", "--set", "transition_steps=300",
        "--set", "eval_every=250", "--set", "eval_episodes=5"]

SEED_METRICS = ("dynamics_loss", "reward_mae", "continue_acc", "mean_imagined_return", "actor_grad_norm",
                "world_model_grad_norm", "entropy", "eval_return", "critic_loss", "critic_value_mean",
                "critic_td_error")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(exit code, run dir, metric rows) of one CLI training run."""
    run_dir = tmp_path_factory.mktemp("e2e")
    code = main(["train", "--run-dir", str(run_dir), *ARGS])
    return code, run_dir, read_metrics(run_dir)


def test_cli_run_completes(run):
    code, run_dir, rows = run
    assert code == 0
    assert rows and rows[-1]["env_step"] == STEPS


def test_eval_return_rises(run):
    """The last evaluation is clearly above the first, which scores the untrained policy during warmup."""
    _, _, rows = run
    evals = [(r["env_step"], r["eval_return"]) for r in rows if "eval_return" in r]
    assert [s for s, _ in evals] == [250, 500, 750, 1000]
    first, last = evals[0][1], evals[-1][1]
    assert last >= 2 * first and last >= first + 40, evals


def test_rows_carry_position_and_phase(run):
    """Every row says where in training it was: env step, phase and update count, the latter never falling."""
    _, _, rows = run
    for row in rows:
        assert {"env_step", "phase", "updates"} <= row.keys()
        assert row["phase"] in {"warmup", "transition", "full"}
    assert [r["phase"] for r in rows][0] == "warmup" and rows[-1]["phase"] == "full"
    updates = [r["updates"] for r in rows]
    assert updates == sorted(updates) and updates[-1] > 0


def test_every_seed_metric_is_logged(run):
    _, _, rows = run
    logged = set().union(*rows)
    missing = [m for m in SEED_METRICS if m not in logged]
    assert not missing, missing


def test_artefacts_exist(run):
    """A resumable checkpoint, the training-curves PNG and a TensorBoard event file."""
    _, run_dir, _ = run
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == f"step_{STEPS:09d}.pt"
    curves = run_dir / "training_curves.png"
    assert curves.exists() and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert (run_dir / "config.json").exists()
