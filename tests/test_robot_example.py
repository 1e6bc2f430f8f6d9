"""The robot example (`clients/examples/robot/`): a MuJoCo inverted pendulum stepped through MuJoCo's own
API, no gymnasium, taught and evaluated over a gRPC ActStream against `reverie up --spaces`.

Fast: the example's simulator is gymnasium's InvertedPendulum-v5 step for step (the same states set
directly, the same actions: bit-identical observations, the same rewards, terminations and the time
limit; seeded resets give the same initial states), its control rate holds, and it imports no gymnasium.
Slow: against a real `reverie up --spaces clients/examples/robot/spaces.json` (smoke preset), every step
it simulated reaches the experience log from one stream, exactly, and its evaluation episodes become the
trainer's eval_return rows; its command line runs with gymnasium made unimportable.

Skipped only when `mujoco` cannot be imported (`pip install -e '.[robot]'`, in the `test` extra).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the robot example needs the mujoco bindings: pip install -e '.[robot]'")

from reverie.runs import RunDir  # noqa: E402
from loopback import free_ports, stop_process, wait_until  # noqa: E402
from serving import logged_fragments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROBOT = ROOT / "clients" / "examples" / "robot"
sys.path.insert(0, str(ROBOT))  # the example is a script beside its files, not part of the installed package
import pendulum  # noqa: E402
from pendulum import Pendulum, Ticker  # noqa: E402
# Imported first by a Python process started with it on PYTHONPATH: importing gymnasium fails there.
NO_GYMNASIUM = '''
import sys
class _NoGymnasium:
    def find_spec(self, name, path=None, target=None):
        if name == "gymnasium" or name.startswith("gymnasium."):
            raise ImportError("this test forbids importing gymnasium")
sys.meta_path.insert(0, _NoGymnasium())
'''


# ---------------------------------------------------------------------------------------------- dynamics
def gymnasium_pendulum():
    import gymnasium as gym

    return gym.make("InvertedPendulum-v5")


def balance(obs: np.ndarray) -> np.ndarray:
    """A linear controller that holds the pole up (found by a small search): the force is
    5 x angle + cart velocity + angular velocity."""
    return np.clip([5.0 * obs[1] + obs[2] + obs[3]], -3, 3).astype(np.float32)


def assert_same_steps(env, sim: Pendulum, policy, steps: int = 50) -> int:
    """Steps both with the forces `policy(observation, step)` gives (until an episode's end, at most `steps`):
    each step's observation, reward and end flags are the same. Returns the steps taken."""
    obs = env.unwrapped._get_obs()
    for n in range(1, steps + 1):
        action = np.asarray(policy(obs, n), np.float32)
        obs, reward, terminated, truncated, _ = env.step(action)
        mine = sim.step(action)
        assert np.array_equal(mine[0], obs), (n, mine[0], obs)
        assert mine[0].dtype == obs.dtype == np.float64
        assert (mine[1], mine[2], mine[3]) == (reward, terminated, truncated), n
        if terminated or truncated:
            return n
    return steps


def shaky(seed: int):
    """The balancing controller with noise, and every 10th force far beyond the motor's [-3, 3] (MuJoCo
    clamps it, in both)."""
    rng = np.random.default_rng(seed)
    return lambda obs, n: ([4.5 * (-1) ** (n // 10)] if n % 10 == 0 else balance(obs) + rng.uniform(-1, 1, 1))


def push(obs, n):
    return [0.4]  # a steady push: the pole falls within ~15 steps


STATES = [  # (qpos, qvel, policy, whether the pole falls within 50 steps): cart position, pole angle; their velocities
    ([0.0, 0.0], [0.0, 0.0], shaky(0), False),
    ([0.05, -0.03], [0.2, -0.4], shaky(1), False),
    ([-0.5, 0.15], [-0.1, 0.6], push, True),  # near the angle limit, falling: the termination itself is compared
    ([0.9, -0.01], [1.5, 0.0], shaky(2), True),  # into the rail's end (the slider's range is [-1, 1]): the pole topples
]


@pytest.mark.parametrize("qpos, qvel, policy, falls", STATES, ids=["rest", "moving", "falling", "rail-end"])
def test_the_simulator_steps_as_inverted_pendulum_v5_from_the_same_state(qpos, qvel, policy, falls):
    env, sim = gymnasium_pendulum(), Pendulum()
    env.reset(seed=0)
    env.unwrapped.set_state(np.asarray(qpos, np.float64), np.asarray(qvel, np.float64))
    first = sim.set_state(np.asarray(qpos, np.float64), np.asarray(qvel, np.float64))
    assert np.array_equal(first, env.unwrapped._get_obs())
    steps = assert_same_steps(env, sim, policy)
    assert steps < 50 if falls else steps == 50
    assert sim.dt == pytest.approx(env.unwrapped.dt) == pytest.approx(0.04)


def test_the_simulator_ends_an_episode_at_inverted_pendulum_v5s_time_limit():
    env, sim = gymnasium_pendulum(), Pendulum()
    env.reset(seed=1)
    state = (np.asarray([0.0, 0.01]), np.asarray([0.0, 0.0]))
    env.unwrapped.set_state(*state)
    obs = sim.set_state(*state)
    for n in range(1, 1001):
        action = balance(obs)
        expected = env.step(action)
        obs, reward, terminated, truncated = sim.step(action)
        assert np.array_equal(obs, expected[0]) and (reward, terminated, truncated) == tuple(expected[1:4]), n
        assert truncated == (n == 1000) and not terminated
    # Past the limit gymnasium's TimeLimit keeps saying truncated, and so does the simulator.
    assert sim.step(balance(obs))[3] and env.step(balance(obs))[3]


def test_seeded_resets_are_inverted_pendulum_v5s():
    env, sim = gymnasium_pendulum(), Pendulum(seed=11)
    first, _ = env.reset(seed=11)
    starts = [(first, sim.reset())] + [(env.reset()[0], sim.reset()) for _ in range(3)]
    for theirs, mine in starts:
        assert np.array_equal(mine, theirs)
        assert np.all(np.abs(mine) <= 0.01) and np.any(mine != 0)  # uniform noise of +-0.01 on qpos and qvel
    assert len({tuple(mine) for _, mine in starts}) == 4
    # And an episode from a reset plays the same.
    env.reset(seed=12)
    other = Pendulum(seed=12)
    assert np.array_equal(other.reset(), env.unwrapped._get_obs())
    assert assert_same_steps(env, other, push) < 50


def test_the_example_imports_no_gymnasium():
    done = subprocess.run(
        [sys.executable, "-c", "import sys; import pendulum as p; p.Pendulum(0).reset();"
         "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('gymnasium', 'torch')))"],
        cwd=ROBOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_control_rate_holds_without_bursts():
    ticker, started = Ticker(100.0), time.perf_counter()
    for _ in range(11):
        ticker.wait()
    assert time.perf_counter() - started >= 0.1 - 1e-3  # 11 ticks at 100/s: 10 periods at least
    time.sleep(0.05)  # the controller stalls for five periods: that tick is late...
    ticker.wait()
    assert ticker.late >= 1
    resumed = time.perf_counter()
    ticker.wait()
    ticker.wait()
    assert time.perf_counter() - resumed >= 0.02 - 1e-3  # ...and the next ones are spaced again, not a catch-up burst
    free, started = Ticker(0), time.perf_counter()
    for _ in range(1000):
        free.wait()
    assert time.perf_counter() - started < 0.5 and free.late == 0


# ---------------------------------------------------------------------------------------------- served
class Recorder(Pendulum):
    """The example's simulator, keeping what it produced: each episode's observations (its start's, then
    each step's), the forces it was given, and each step's reward and end flags."""

    def __init__(self, seed: int):
        super().__init__(seed)
        self.episodes: list[dict] = []

    def set_state(self, qpos, qvel) -> np.ndarray:
        obs = super().set_state(qpos, qvel)
        self.episodes.append({"observations": [obs], "actions": [], "rewards": [], "ends": []})
        return obs

    def step(self, action):
        obs, reward, terminated, truncated = super().step(action)
        episode = self.episodes[-1]
        episode["observations"].append(obs)
        episode["actions"].append(np.asarray(action, np.float64))
        episode["rewards"].append(reward)
        episode["ends"].append((terminated, truncated))
        return obs, reward, terminated, truncated


def start_up(run_dir: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    port, grpc_port = free_ports(2)
    command = [sys.executable, "-m", "reverie.cli", "up", "--spaces", str(ROBOT / "spaces.json"), "--run-dir", str(run_dir),
               "--preset", "smoke", "--set", "threads=1", "--follow", "latest",
               "--port", str(port), "--grpc-port", str(grpc_port)]
    up = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert up.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 90, "reverie up ready", interval=0.25)
    return up, url, f"127.0.0.1:{grpc_port}"


STEPS, EVALUATE_EVERY = 300, 5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_robot_teaches_over_a_stream_and_its_evaluations_are_the_trainers(tmp_path):
    run_dir = tmp_path / "run"
    up, url, target = start_up(run_dir, tmp_path / "up.log")
    try:
        model = httpx.get(f"{url}/model").json()
        assert model["manifest"]["world"] == "client" and model["manifest"]["env_id"] == "inverted-pendulum-mujoco"
        sim, rows = Recorder(seed=3), []
        summary = pendulum.run(target, STEPS, rate=0, evaluate_every=EVALUATE_EVERY, seed=3, report=rows.append, sim=sim)
        taught = [r for r in rows if r["kind"] == "teach"]
        evaluated = [r for r in rows if r["kind"] == "evaluate"]
        assert summary["taught_steps"] == sum(r["steps"] for r in taught) == STEPS
        # A round of evaluation episodes after every 5th taught episode (not after the last): 3 episodes, or fewer
        # when one's version had its 3 already (that episode ends the round).
        rounds, since, counts = [], 0, defaultdict(int)
        for previous, row in zip([None, *rows], rows):
            if row["kind"] == "teach":
                since += 1
            elif previous["kind"] == "teach":
                assert since == EVALUATE_EVERY
                rounds.append([row])
                since = 0
            else:
                rounds[-1].append(row)
        assert len(rounds) == len(taught) // EVALUATE_EVERY - (len(taught) % EVALUATE_EVERY == 0) > 0
        for evaluation_round in rounds:
            for i, row in enumerate(evaluation_round):
                counts[row["model_version"]] += 1
                last = i == len(evaluation_round) - 1
                assert counts[row["model_version"]] <= 3 or last
                assert not last or len(evaluation_round) == 3 or counts[row["model_version"]] > 3
        assert len(rounds[0]) == 3
        assert len(sim.episodes) == len(rows)
        for row, episode in zip(rows, sim.episodes):  # what it printed is what it simulated
            assert row["return"] == sum(episode["rewards"]) and row["steps"] == len(episode["rewards"])

        # Every step it simulated is in the experience log, from its one stream, in the order played.
        fragments = logged_fragments(run_dir / "experience")
        assert len({f.source for f in fragments}) == 1 and fragments[0].source.startswith("stream:")
        by_episode: dict[str, list] = defaultdict(list)
        for f in fragments:
            by_episode[f.episode].append(f)
        assert len(by_episode) == len(rows)
        for row, episode, parts in zip(rows, sim.episodes, by_episode.values()):
            assert [p.index for p in parts] == list(range(len(parts))) == list(range(row["steps"]))
            observations = np.concatenate([parts[0].observations[:1], *[p.observations[1:] for p in parts]])
            assert observations.dtype == np.float32
            assert np.array_equal(observations, np.asarray(episode["observations"], np.float32))
            for p, previous in zip(parts, episode["observations"]):  # each transition starts where the last ended
                assert np.array_equal(p.observations[0], np.asarray(previous, np.float32))
            # Box actions are logged as the agent's, scaled to [-1, 1]: the force / 3.
            actions = np.concatenate([p.actions for p in parts])
            assert np.allclose(3.0 * actions, np.asarray(episode["actions"]), atol=1e-5)
            assert np.array_equal(np.concatenate([p.rewards for p in parts]), np.asarray(episode["rewards"], np.float32))
            assert all(not (p.terminated or p.truncated) for p in parts[:-1])
            end = (parts[-1].terminated, parts[-1].truncated)
            assert end == ((False, True) if row["end"] == "budget" else episode["ends"][-1])
            assert {p.evaluation for p in parts} == {row["kind"] == "evaluate"}
            assert {int(v) for p in parts for v in p.model_versions} == set(row["model_versions"])

        # The trainer's evaluation of a version is the mean of its first three evaluation episodes here.
        returns: dict[int, list[float]] = defaultdict(list)
        for r in evaluated:
            returns[r["model_version"]].append(r["return"])
        complete = {v: float(np.mean(r[:3])) for v, r in returns.items() if len(r) >= 3}
        assert complete

        def trainer() -> dict[int, float]:
            return {r["eval_version"]: r["eval_return"] for r in RunDir(run_dir).metrics() if "eval_return" in r}

        wait_until(lambda: set(complete) <= set(trainer()), 120, f"eval_return rows for versions {sorted(complete)}",
                   interval=0.5)
        assert trainer() == pytest.approx(complete, rel=1e-6)
        wait_until(lambda: max((r.get("client_steps", 0) for r in RunDir(run_dir).metrics()), default=0) >= 100, 60,
                   "the trainer to learn from 100 of its steps", interval=0.5)

        # Its command line: gymnasium unimportable, a fixed rate, episodes and the summary as JSON lines.
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(NO_GYMNASIUM)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, str(ROBOT / "pendulum.py"), "--server", target, "--steps", "40",
                               "--rate", "50", "--evaluate-every", "2", "--eval-episodes", "1", "--seed", "4", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        episodes, final = lines[:-1], lines[-1]["summary"]
        assert final["taught_steps"] == sum(e["steps"] for e in episodes if e["kind"] == "teach") == 40
        assert {e["kind"] for e in episodes} == {"teach", "evaluate"}
        assert all(isinstance(e["model_version"], int) and e["model_version"] >= 1 for e in episodes)
        assert final["wall_s"] >= (sum(e["steps"] for e in episodes) - 1) / 50  # at most 50 control steps a second
        assert "forbids" not in done.stderr
    finally:
        stop_process(up, signal.SIGINT, 60)
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
