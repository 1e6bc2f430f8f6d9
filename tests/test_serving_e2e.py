"""Train -> export -> serve -> client, each a real process: the served agent plays as the trainer reports."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from reverie.bundle import latest_bundle, load_manifest
from serving import ProcessServer

pytestmark = pytest.mark.slow  # trains a CartPole agent or starts `reverie up`: tens of seconds


def test_reverie_eval_replays_the_trainers_own_evaluation(trained_cartpole):
    """`reverie eval` through onnxruntime gives the trainer's eval return for the same agent and episodes."""
    manifest = load_manifest(latest_bundle(trained_cartpole))
    assert manifest.last_eval_return >= 475
    out = subprocess.run([sys.executable, "-m", "reverie.cli", "eval", "--bundle", str(trained_cartpole)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    mean = float(re.search(r"mean return ([\d.]+)", out).group(1))
    assert abs(mean - manifest.last_eval_return) < 1e-6, out


@pytest.fixture(scope="module")
def fresh_episodes(trained_cartpole) -> float:
    """The bundle's mean return on 10 episodes no evaluation played (seed 7), by `reverie eval` in process."""
    out = subprocess.run([sys.executable, "-m", "reverie.cli", "eval", "--bundle", str(trained_cartpole / "export"),
                          "--episodes", "10", "--seed", "7"], capture_output=True, text=True, check=True, timeout=120).stdout
    return float(out.split("mean return ")[1].split()[0])


@pytest.mark.parametrize("transport", [["--transport", "rest"], ["--transport", "grpc"], ["--transport", "grpc", "--stream"]],
                         ids=["rest", "grpc-act", "grpc-actstream"])
def test_the_game_loop_plays_cartpole_over_the_network(trained_cartpole, fresh_episodes, transport):
    """The example client, in its own process, plays fresh episodes through `reverie serve` exactly as the
    bundle plays them in process, and that is a trained agent's play (a random one scores ~22)."""
    with ProcessServer(trained_cartpole) as server:
        out = subprocess.run([sys.executable, "-m", "reverie.clients.game_loop", "--url", server.url, "--target", server.grpc_target,
                              *transport, "--episodes", "10", "--seed", "7", "--json"],
                             capture_output=True, text=True, check=True, timeout=300).stdout
    summary = json.loads(out)
    assert summary["env_id"] == "CartPole-v1" and summary["episodes"] == 10
    assert summary["mean_return"] == pytest.approx(fresh_episodes, abs=0.01) and fresh_episodes > 400, summary["returns"]
    assert summary["requests"] == sum(summary["returns"])  # one request per env step
    assert len(summary["model_versions"]) == 1


def test_the_preview_example_saves_a_png(trained_cartpole, tmp_path):
    with ProcessServer(trained_cartpole) as server:
        out = subprocess.run([sys.executable, "-m", "reverie.clients.preview", "--url", server.url, "--samples", "4",
                              "--out", str(tmp_path / "preview.png")], capture_output=True, text=True, check=True,
                             timeout=120).stdout
    assert (tmp_path / "preview.png").read_bytes()[:4] == b"\x89PNG" and "lambda-return" in out
