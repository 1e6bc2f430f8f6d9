"""Partially observed vector envs (`--set obs_indices=[...]`): the agent, its bundle, the service and the
clients all see the kept entries only, and bad indices are refused before anything starts. The run
here is in sequence mode, as such an env needs: its bundle carries beliefs (state and memory)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reverie.clients import game_loop
from reverie import envs
from builders import small_config
from reverie.bundle import latest_bundle, load_manifest
from reverie.cli import main
from reverie.runs import RunDir
from serving import ThreadServer


def test_kept_entries_are_the_full_observations_entries():
    """CartPole without its velocities is the full CartPole's x and angle, step for step."""
    full, partial = envs.make("CartPole-v1"), envs.make("CartPole-v1", [2, 0])
    assert partial.observation_space.shape == (2,)
    np.testing.assert_array_equal(partial.observation_space.high, full.observation_space.high[[2, 0]])
    obs_full, _ = full.reset(seed=3)
    obs_partial, _ = partial.reset(seed=3)
    for action in [0, 1, 1, 0, 1]:
        np.testing.assert_array_equal(obs_partial, obs_full[[2, 0]])
        obs_full, *_ = full.step(action)
        obs_partial, *_ = partial.step(action)


@pytest.mark.parametrize("indices, message", [([], "at least one"), ([1, 1], "repeats"), ([0, 4], "out of range"),
                                              ([-1], "out of range")])
def test_bad_obs_indices_are_refused_saying_why(indices, message, tmp_path, capsys):
    with pytest.raises(ValueError, match=message):
        envs.make("CartPole-v1", indices)
    code = main(["train", "--preset", "smoke", "--steps", "10", "--run-dir", str(tmp_path),
                 "--set", f"obs_indices={json.dumps(indices)}"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory):
    """One short CLI run on CartPole without velocities, in sequence mode (the agent such an env needs)."""
    run_dir = tmp_path_factory.mktemp("partial")
    assert main(["train", "--preset", "smoke", "--steps", "100", "--run-dir", str(run_dir),
                 "--set", "obs_indices=[0,2]", "--set", "sequence_mode=true", "--set", "sequence_length=4",
                 "--set", "dynamics_ensemble=2", "--set", "threads=1"]) == 0
    return run_dir


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
def test_a_partially_observed_bundle_records_its_entries_and_reverie_eval_plays_it(partial_run, capsys):
    manifest = json.loads((latest_bundle(partial_run / "export") / "manifest.json").read_text())
    assert manifest["obs_indices"] == [0, 2] and manifest["observation_space"]["shape"] == [2]
    capsys.readouterr()
    assert main(["eval", "--bundle", str(partial_run), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out


MODES = {"rest-history": ["--transport", "rest", "--memory", "history"],
         "rest-session": ["--transport", "rest", "--memory", "session"],
         "grpc-history": ["--transport", "grpc", "--memory", "history"],
         "grpc-stream": ["--transport", "grpc", "--stream"]}


@pytest.mark.slow  # its fixture trains a run
def test_the_served_agent_with_memory_plays_as_the_trainer_evaluated_it(partial_run, capsys):
    """The game loop sends 2-number observations (a 4-number one would be refused) and the agent's
    memory reaches the server by each route: the client's history over REST and gRPC, a REST session,
    an ActStream's own. Each plays the trainer's evaluation episodes (its seed) exactly as the trainer
    scored them: the bundle's eval return, episode for episode the same as `reverie eval`'s."""
    manifest = load_manifest(latest_bundle(partial_run / "export"))
    assert manifest.history_length == 3 and manifest.last_eval_return is not None
    capsys.readouterr()
    assert main(["eval", "--bundle", str(partial_run)]) == 0
    assert f"mean return {manifest.last_eval_return:.2f}" in capsys.readouterr().out
    with ThreadServer(partial_run / "export") as server:
        for mode, flags in MODES.items():
            assert game_loop.main(["--url", server.url, "--target", server.grpc_target, *flags, "--json",
                                   "--episodes", str(manifest.eval_episodes), "--seed", str(manifest.seed)]) == 0
            summary = json.loads(capsys.readouterr().out)
            assert summary["requests"] == sum(summary["returns"]) > 0, mode
            assert summary["mean_return"] == pytest.approx(manifest.last_eval_return), mode


@pytest.mark.slow  # its fixture trains a run
def test_the_sequence_run_exports_beliefs_and_publishes_its_imagination(partial_run):
    """Sequence mode through the CLI: the memory beside the state in every exported graph (state_size =
    state + memory), the ensemble's disagreement and the losses logged, and the imagination measured on
    the last evaluation's episodes reaching GET /model through status.json."""
    manifest = load_manifest(latest_bundle(partial_run / "export"))
    cfg = small_config(sequence_mode=True)
    assert manifest.state_size == cfg.state_dim + cfg.memory_dim
    rows = RunDir(partial_run).metrics()
    trained = [r for r in rows if "dynamics_loss" in r]
    assert trained and all(r["dynamics_disagreement"] > 0 and np.isfinite(r["world_model_loss"]) for r in trained)
    fidelity = RunDir(partial_run).status()["imagination_fidelity"]
    evaluated = [r for r in rows if "eval_return" in r]
    assert fidelity["env_step"] == evaluated[-1]["env_step"] > 0
    assert 0 < len(fidelity["obs_error"]) <= cfg.horizon and all(0 <= a <= 1 for a in fidelity["continue_accuracy"])
    assert evaluated[-1]["imagination_obs_error"] == pytest.approx(np.mean(fidelity["obs_error"]))
