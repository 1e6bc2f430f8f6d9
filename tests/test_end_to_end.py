"""A real CartPole run through the `reverie train` CLI (the session's `trained_cartpole`: the cartpole
preset until an evaluation reaches 475): it learns, and it leaves every artefact behind. The same
run serves the critic and serving tests, so the suite trains CartPole to solved once."""

from __future__ import annotations


import pytest

from reverie.runs import RunDir

pytestmark = pytest.mark.slow  # the solved CartPole run

SEED_METRICS = ("dynamics_loss", "reward_mae", "continue_acc", "mean_imagined_return", "actor_grad_norm",
                "world_model_grad_norm", "entropy", "eval_return", "critic_loss", "critic_value_mean",
                "critic_td_error")


@pytest.fixture(scope="module")
def run(trained_cartpole):
    """(run dir, metric rows, config) of the CLI training run."""
    return trained_cartpole, RunDir(trained_cartpole).metrics(), RunDir(trained_cartpole).config()


def test_eval_return_rises_from_the_untrained_policy_to_the_target(run):
    """Evaluations every eval_every steps; the first scores the untrained policy during warmup, and the
    run stopped at the first one that reached the target."""
    _, rows, cfg = run
    evals = [(r["env_step"], r["eval_return"]) for r in rows if "eval_return" in r]
    steps = [s for s, _ in evals]
    assert steps == list(range(cfg["eval_every"], steps[-1] + 1, cfg["eval_every"])), steps
    assert evals[0][1] < 100 and evals[-1][1] >= cfg["target_return"] == 475
    assert all(v < 475 for _, v in evals[:-1]) and rows[-1]["env_step"] == steps[-1]


def test_rows_carry_position_and_phase(run):
    """Every row says where in training it was: env step, phase and update count, the latter never falling."""
    _, rows, _ = run
    for row in rows:
        assert {"env_step", "phase", "updates"} <= row.keys()
        assert row["phase"] in {"warmup", "transition", "full"}
    assert [r["phase"] for r in rows][0] == "warmup" and rows[-1]["phase"] == "full"
    updates = [r["updates"] for r in rows]
    assert updates == sorted(updates) and updates[-1] > 0


def test_every_seed_metric_is_logged(run):
    _, rows, _ = run
    logged = set().union(*rows)
    missing = [m for m in SEED_METRICS if m not in logged]
    assert not missing, missing


def test_artefacts_exist(run):
    """A resumable checkpoint, the training-curves PNG and a TensorBoard event file."""
    run_dir, rows, _ = run
    checkpoint = RunDir(run_dir).latest_checkpoint()
    assert checkpoint is not None and checkpoint.name == f"step_{rows[-1]['env_step']:09d}.pt"
    curves = run_dir / "training_curves.png"
    assert curves.exists() and curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert (run_dir / "config.json").exists()
