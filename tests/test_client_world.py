"""A world that lives at the client (`--spaces FILE`): declared, taught, evaluated and served with no
gymnasium env anywhere in the trainer (its `gymnasium.make` raises in these tests), and bad spaces
files refused before anything starts, each naming its field."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import RestClient
from reverie.bundle import latest_bundle
from reverie.cli import main
from loopback import free_ports, wait_until  # (fragments: 4 numbers, 2 actions)
from serving import fragment, write  # (fragments: 4 numbers, 2 actions)
from reverie.runs import RunDir

SPACES = {"name": "reach", "observation_space": {"shape": [2], "dtype": "float32"},
          "action_space": {"kind": "discrete", "n": 3}}
# Imported first by every Python process started with it on PYTHONPATH: making any gymnasium env fails.
NO_GYMNASIUM = '''
import gymnasium, gymnasium.envs.registration
def _refuse(*args, **kwargs):
    raise RuntimeError("this test forbids gymnasium envs")
gymnasium.make = gymnasium.envs.registration.make = _refuse
'''


class Reach:
    """A client's own world, not gymnasium: a point on a line moves left, stays or moves right; the
    reward is -|distance to the goal|; reaching the goal ends the episode, 20 steps cut it."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.x, self.goal, self.t = self.rng.uniform(-1, 1), self.rng.choice([-0.8, 0.8]), 0
        return self.obs()

    def obs(self) -> np.ndarray:
        return np.asarray([self.x, self.goal], np.float32)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        self.x = float(np.clip(self.x + 0.2 * (action - 1), -1, 1))
        self.t += 1
        reached = abs(self.x - self.goal) < 0.1
        return self.obs(), -abs(self.x - self.goal), reached, self.t >= 20 and not reached


def write_spaces(folder: Path, spaces: dict) -> Path:
    path = folder / "spaces.json"
    path.write_text(json.dumps(spaces))
    return path


BAD = [
    ("missing key", {k: v for k, v in SPACES.items() if k != "action_space"}, "action_space: Field required"),
    ("shape not positive", {**SPACES, "observation_space": {"shape": [0]}}, "observation_space.shape.0"),
    ("shape not a list", {**SPACES, "observation_space": {"shape": 5}}, "observation_space.shape"),
    ("unknown dtype", {**SPACES, "observation_space": {"shape": [2], "dtype": "float64"}}, "observation_space.dtype"),
    ("unknown kind", {**SPACES, "action_space": {"kind": "joystick", "n": 3}}, "action_space.kind"),
    ("box without bounds", {**SPACES, "action_space": {"kind": "box", "shape": [1]}}, "action_space: a box action space needs `low`"),
    ("box bound not finite", {**SPACES, "action_space": {"kind": "box", "shape": [1], "low": [-1], "high": [1e999]}},
     "`high` must be finite"),
    ("low above high", {**SPACES, "action_space": {"kind": "box", "shape": [1], "low": [1], "high": [-1]}},
     "`low` [1.0] is above `high` [-1.0]"),
    ("frames not [H, W, 3]", {**SPACES, "observation_space": {"shape": [64, 64], "dtype": "uint8"}},
     "uint8 observations are frames [H, W, 3]"),
]


@pytest.mark.parametrize("command", ["train", "up"])
@pytest.mark.parametrize("case, spaces, named", BAD, ids=[b[0] for b in BAD])
def test_a_bad_spaces_file_exits_2_naming_the_field_before_anything_starts(tmp_path, capsys, command, case, spaces, named):
    path = tmp_path / "spaces.json"
    path.write_text(json.dumps(spaces).replace("Infinity", "1e999"))  # JSON has no infinity; 1e999 is read as one
    run_dir = tmp_path / "run"
    assert main([command, "--spaces", str(path), "--run-dir", str(run_dir)]) == 2
    assert named in capsys.readouterr().err
    assert not run_dir.exists()  # nothing started


def test_an_env_and_spaces_together_are_refused(tmp_path, capsys):
    path = write_spaces(tmp_path, SPACES)
    assert main(["train", "--spaces", str(path), "--env", "CartPole-v1", "--run-dir", str(tmp_path / "run")]) == 2
    assert "give an env ('CartPole-v1') or a spaces file, not both" in capsys.readouterr().err


def best_version(run_dir: Path) -> int:
    return int(latest_bundle(run_dir, "best").name[1:])


def play(client: RestClient, world: Reach, session: str, evaluate: bool) -> tuple[float, set[int]]:
    """One episode taught through a session: each step reports the last one's outcome."""
    obs, total, versions = world.reset(), 0.0, set()
    answer = client.act(obs, session=session, reset=True, evaluate=evaluate)
    while True:
        versions.add(answer.model_version)
        obs, reward, terminated, truncated = world.step(answer.action)
        total += reward
        answer = client.act(obs, session=session, reward=reward, terminated=terminated, truncated=truncated)
        if terminated or truncated:
            return total, versions


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
@pytest.mark.timeout(240)
def test_a_client_world_is_taught_evaluated_and_its_best_served_with_no_env(tmp_path):
    spaces = write_spaces(tmp_path, SPACES)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_GYMNASIUM)
    run_dir = tmp_path / "run"
    port, grpc_port = free_ports(2)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    up = subprocess.Popen([sys.executable, "-m", "reverie.cli", "up", "--spaces", str(spaces), "--run-dir", str(run_dir),
                           "--preset", "smoke", "--set", "export_every=100", "--set", "checkpoint_every=1000",
                           "--set", "client_eval_episodes=2",
                           "--port", str(port), "--grpc-port", str(grpc_port), "--follow", "best"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with RestClient(f"http://127.0.0.1:{port}") as client:
            client.wait_ready(60)
            model = client.model()
            assert model["manifest"]["env_id"] == "reach" and model["manifest"]["world"] == "client"
            with GrpcClient(f"127.0.0.1:{grpc_port}") as grpc_client:
                assert grpc_client.model()["manifest"]["world"] == "client"

            world, evaluations, deadline = Reach(0), [], time.monotonic() + 150
            for episode in itertools.count():
                assert time.monotonic() < deadline, "no two evaluations within 150 s"
                if episode % 2:
                    total, versions = play(client, world, "evaluator", evaluate=True)
                    assert len(versions) == 1  # one version plays a whole evaluation, whatever was exported meanwhile
                    evaluations.append((versions.pop(), total))
                else:
                    play(client, world, "player", evaluate=False)
                time.sleep(0.2)  # a client world's own pace (~50-100 steps/s here): the trainer keeps up with it
                rows = [r for r in RunDir(run_dir).metrics() if "eval_return" in r]
                if len(rows) >= 2 and client.model()["model_version"] == best_version(run_dir):
                    break
            wait_until(lambda: len([r for r in RunDir(run_dir).metrics() if "eval_return" in r]) >= 2, 30, "two evaluations")
            rows = [r for r in RunDir(run_dir).metrics() if "eval_return" in r]
            by_version: dict[int, list[float]] = {}
            for version, total in evaluations:
                by_version.setdefault(version, []).append(total)
            for row in rows:  # each evaluation is the mean of its version's first two evaluation episodes
                assert row["eval_return"] == pytest.approx(np.mean(by_version[row["eval_version"]][:2]), rel=1e-5)
            best = max(rows, key=lambda r: (r["eval_return"], r["eval_version"]))
            assert best_version(run_dir) == best["eval_version"]
            wait_until(lambda: client.model()["model_version"] == best["eval_version"], 10, "the server to follow BEST")
            assert any(r.get("client_steps", 0) > 0 for r in RunDir(run_dir).metrics())
    finally:
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output
    assert "forbids gymnasium" not in output
    # The run resumes, exports and reports its config like any other, and `reverie eval` says what it needs.
    assert main(["export", "--run-dir", str(run_dir)]) == 0
    assert main(["eval", "--bundle", str(run_dir)]) == 2


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
def test_a_client_world_run_resumes_exports_and_reports_its_config(tmp_path, capsys):
    """No env anywhere: a --spaces run trains from its log, resumes from its checkpoint with the spaces
    it saved, exports, and `reverie config --spaces` names the world and its source."""
    spaces = write_spaces(tmp_path, {"name": "four", "observation_space": {"shape": [4]},
                                     "action_space": {"kind": "discrete", "n": 2}})
    write(tmp_path / "log", [fragment(e, 0, 30, 0, "terminated") for e in range(5)])
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--set", f"experience={tmp_path / 'log'}", "--set", "threads=1"]
    assert main(["train", "--spaces", str(spaces), "--preset", "smoke", "--steps", "60", *common]) == 0
    assert main(["train", "--resume", "--steps", "120", *common]) == 0
    assert "done: env step 120" in capsys.readouterr().out
    assert main(["export", "--run-dir", str(run)]) == 0
    assert str(run / "export") in capsys.readouterr().out  # the new version's path
    manifest = json.loads((latest_bundle(run) / "manifest.json").read_text())
    assert (manifest["env_id"], manifest["world"], manifest["observation_space"]["shape"]) == ("four", "client", [4])
    assert main(["config", "--spaces", str(spaces), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["env_id"]["value"] == "four" and rows["source"]["value"] == "clients"
