"""A robot that is not gymnasium: a MuJoCo inverted pendulum driven through MuJoCo's own API at a fixed
control rate, taught and evaluated over one gRPC ActStream.

    reverie up --spaces clients/examples/robot/spaces.json             # the trainer has no env: it learns from this
    python clients/examples/robot/pendulum.py --server 127.0.0.1:50051 --rate 25 --steps 20000 --evaluate-every 10

The model is the one gymnasium's InvertedPendulum-v5 wraps (`inverted_pendulum.xml` beside this file),
loaded and stepped with the `mujoco` bindings directly; nothing here imports gymnasium. Its dynamics are
InvertedPendulum-v5's, rule for rule, so a run here compares with `reverie train --env InvertedPendulum-v5`:

- a control step is 2 MuJoCo steps of the model's 0.02 s (`frame_skip` 2: dt 0.04 s, 25 steps per
  simulated second); the action is the slider motor's ctrl, [-3, 3] (MuJoCo clamps it to `ctrlrange`);
- the observation is concat(qpos, qvel): cart position, pole angle, cart velocity, pole angular velocity
  (float64 here, sent as the float32 that `spaces.json` declares, as the trainer casts gymnasium's);
- reward 1 for each step after which the pole is still up, 0 for the step that ends the episode;
  terminated when |pole angle| > 0.2 rad or the observation is not finite; truncated at 1,000 steps;
- a reset is MuJoCo's `mj_resetData`, then qpos and qvel each get uniform noise in [-0.01, 0.01] drawn
  from one numpy Generator (qpos first), `np.random.default_rng(seed)`: the Generator gymnasium's
  `reset(seed=seed)` makes, so seed s gives the initial states of `env.reset(seed=s)`, `env.reset()`, ...

The loop is a controller's: it steps at `--rate` control steps per second (25 is the model's real time;
0 as fast as the server answers). Each request carries the outcome of the previous action (reward,
terminated, truncated), so the server writes the transition to the experience log the trainer learns
from; taught episodes sample actions (the agent explores). Every `--evaluate-every` taught episodes it
plays `--eval-episodes` evaluation episodes (`evaluate` with `reset`: the server pins one model version,
its newest, for the episode and acts deterministically); after `client_eval_episodes` (3) of one version
the trainer logs that version's eval_return, so a round ends after its first episode when that episode's
version had its 3 already. The trainer learns from evaluation episodes too (they are experience like any
other). `--steps` counts taught steps: the episode under way when it runs out is reported truncated
there. Each episode prints its return and the model version that played it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mujoco
import numpy as np

from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import ApiError

MODEL_XML = Path(__file__).with_name("inverted_pendulum.xml")
SPACES_JSON = Path(__file__).with_name("spaces.json")
FRAME_SKIP = 2  # InvertedPendulum-v5's: MuJoCo steps per control step
MAX_EPISODE_STEPS = 1000  # its TimeLimit
RESET_NOISE_SCALE = 0.01
ANGLE_LIMIT = 0.2  # rad: the pole is down past this


class Pendulum:
    """The simulator, stepped through MuJoCo's API with InvertedPendulum-v5's rules (see the module doc)."""

    def __init__(self, seed: int | None = None, xml: Path = MODEL_XML):
        self.model = mujoco.MjModel.from_xml_path(str(xml))
        self.data = mujoco.MjData(self.model)
        self.init_qpos = self.data.qpos.ravel().copy()  # the model's qpos0 (all zeros here)
        self.init_qvel = self.data.qvel.ravel().copy()
        self.rng = np.random.default_rng(seed)
        self.elapsed = 0

    @property
    def dt(self) -> float:
        """Simulated seconds per control step."""
        return self.model.opt.timestep * FRAME_SKIP

    def observation(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).ravel()

    def reset(self) -> np.ndarray:
        mujoco.mj_resetData(self.model, self.data)
        qpos = self.init_qpos + self.rng.uniform(size=self.model.nq, low=-RESET_NOISE_SCALE, high=RESET_NOISE_SCALE)
        qvel = self.init_qvel + self.rng.uniform(size=self.model.nv, low=-RESET_NOISE_SCALE, high=RESET_NOISE_SCALE)
        return self.set_state(qpos, qvel)

    def set_state(self, qpos, qvel) -> np.ndarray:
        """Puts the pendulum in this state and starts an episode there; returns its observation."""
        self.data.qpos[:] = np.copy(qpos)
        self.data.qvel[:] = np.copy(qvel)  # the model has no actuator activations (na 0) to clear
        mujoco.mj_forward(self.model, self.data)
        self.elapsed = 0
        return self.observation()

    def step(self, action) -> tuple[np.ndarray, float, bool, bool]:
        """One control step: (observation, reward, terminated, truncated)."""
        ctrl = np.asarray(action, np.float64).reshape(-1)
        if ctrl.shape != (self.model.nu,):
            raise ValueError(f"the action has {ctrl.size} entries; the pendulum takes {self.model.nu}")
        self.data.ctrl[:] = ctrl
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)
        mujoco.mj_rnePostConstraint(self.model, self.data)  # as gymnasium does after each step
        obs = self.observation()
        terminated = bool(not np.isfinite(obs).all() or abs(obs[1]) > ANGLE_LIMIT)
        self.elapsed += 1
        return obs, float(not terminated), terminated, self.elapsed >= MAX_EPISODE_STEPS


class Ticker:
    """Holds a loop to `rate` ticks per second (0: no waiting). A tick reached after its time is counted
    late; one more than a whole period late starts the schedule again from now, so a controller that
    fell behind does not catch up in a burst."""

    def __init__(self, rate: float):
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.due: float | None = None
        self.late = 0

    def wait(self) -> None:
        if not self.period:
            return
        now = time.perf_counter()
        if self.due is None:
            self.due = now
        elif now < self.due:
            time.sleep(self.due - now)
        else:
            self.late += 1
            if now - self.due > self.period:
                self.due = now
        self.due += self.period


@dataclass
class Episode:
    kind: str  # "teach" or "evaluate"
    ret: float = 0.0
    steps: int = 0
    versions: set[int] = field(default_factory=set)
    end: str = ""  # "terminated", "truncated" (the time limit), "budget" (--steps ran out)


def play(stream, sim: Pendulum, ticker: Ticker, evaluate: bool, budget: int | None = None) -> Episode:
    """One episode on `stream`: each request reports what followed the previous action. `budget`: taught
    steps left; the episode is reported truncated when they run out."""
    episode = Episode("evaluate" if evaluate else "teach")
    obs = sim.reset()
    answer = stream.act(obs.astype(np.float32), reset=True, evaluate=evaluate)
    check_answer(answer)
    while True:
        episode.versions.add(answer.model_version)
        ticker.wait()
        obs, reward, terminated, truncated = sim.step(answer.action)
        episode.ret += reward
        episode.steps += 1
        if not np.isfinite(obs).all():  # never with this model; the server refuses such an observation
            episode.end = "terminated (not finite, unreported)"
            return episode
        cut = budget is not None and episode.steps >= budget and not (terminated or truncated)
        answer = stream.act(obs.astype(np.float32), reward=reward, terminated=terminated, truncated=truncated or cut)
        if terminated or truncated or cut:  # the answer to the last observation is not played
            episode.end = "terminated" if terminated else "truncated" if truncated else "budget"
            return episode


def check_answer(answer) -> None:
    """The served model must act in this pendulum's world (`reverie up --spaces spaces.json`): one force.
    (A model of other observations refuses the first request itself, naming `obs`.)"""
    action = answer.action
    if not (isinstance(action, list) and len(action) == 1 and -3.0 <= action[0] <= 3.0):
        raise ValueError(f"the served model answered the action {action!r}, not one force in [-3, 3]: start the "
                         f"server with `reverie up --spaces {SPACES_JSON}`")


def run(server: str, steps: int, rate: float = 25.0, evaluate_every: int = 0, eval_episodes: int = 3,
        seed: int | None = 0, token: str | None = None, report=None, sim: Pendulum | None = None) -> dict:
    """Teach `steps` steps (and evaluate every `evaluate_every` taught episodes); `report(row)` is
    called with each episode's row. `sim`: the simulator to drive (default `Pendulum(seed)`).
    Returns the summary."""
    sim, ticker = sim if sim is not None else Pendulum(seed), Ticker(rate)
    taught = played = 0
    rows: list[dict] = []
    evaluated: dict[int, int] = {}  # evaluation episodes played, by model version
    started = time.perf_counter()

    def record(episode: Episode) -> None:
        row = {"episode": len(rows) + 1, "kind": episode.kind, "return": episode.ret, "steps": episode.steps,
               "end": episode.end, "model_version": max(episode.versions), "model_versions": sorted(episode.versions),
               "taught_steps": taught, "wall_s": round(time.perf_counter() - started, 2), "late_ticks": ticker.late}
        rows.append(row)
        if report is not None:
            report(row)

    with GrpcClient(server, token=token) as client:
        client.wait_ready()
        with client.stream() as stream:  # sampled actions: a teacher explores
            while taught < steps:
                episode = play(stream, sim, ticker, evaluate=False, budget=steps - taught)
                taught += episode.steps
                played += 1
                record(episode)
                if evaluate_every and played % evaluate_every == 0 and taught < steps:
                    for _ in range(eval_episodes):
                        evaluation = play(stream, sim, ticker, evaluate=True)
                        if len(evaluation.versions) != 1:
                            raise RuntimeError(f"an evaluation episode was played by versions {sorted(evaluation.versions)}")
                        record(evaluation)
                        version = next(iter(evaluation.versions))
                        evaluated[version] = evaluated.get(version, 0) + 1
                        if evaluated[version] > eval_episodes:
                            break  # that version's evaluation was complete already: the round ends here
    taught_rows = [r for r in rows if r["kind"] == "teach"]
    evaluations = [r for r in rows if r["kind"] == "evaluate"]
    return {"taught_steps": taught, "episodes": len(taught_rows), "evaluations": len(evaluations),
            "mean_return": float(np.mean([r["return"] for r in taught_rows])) if taught_rows else math.nan,
            "wall_s": round(time.perf_counter() - started, 2), "late_ticks": ticker.late,
            "steps_per_s": round(sum(r["steps"] for r in rows) / max(time.perf_counter() - started, 1e-9), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="127.0.0.1:50051", help="the gRPC address (host:port) of reverie up")
    parser.add_argument("--steps", type=int, default=20_000, help="control steps to teach (evaluation steps not counted)")
    parser.add_argument("--rate", type=float, default=25.0,
                        help="control steps per second (25: the model's real time, dt 0.04 s; 0: as fast as possible)")
    parser.add_argument("--evaluate-every", type=int, default=0, metavar="N",
                        help="after every N taught episodes, play --eval-episodes evaluation episodes (0: never)")
    parser.add_argument("--eval-episodes", type=int, default=3,
                        help="evaluation episodes in a row (the trainer evaluates a version after client_eval_episodes, 3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the reset noise (gymnasium's reset(seed=...) states)")
    parser.add_argument("--token", default=os.environ.get("REVERIE_API_TOKEN"), help="bearer token (env REVERIE_API_TOKEN)")
    parser.add_argument("--json", action="store_true", help="each episode, and the summary, as one JSON line")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rate < 0 or args.evaluate_every < 0 or args.eval_episodes < 1:
        parser.error("--steps and --eval-episodes must be >= 1, --rate and --evaluate-every >= 0")

    def report(row: dict) -> None:
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{row['kind']:>8} episode {row['episode']}: return {row['return']:.0f} in {row['steps']} steps "
                  f"({row['end']}), model v{row['model_version']}, {row['taught_steps']} steps taught", flush=True)

    try:
        summary = run(args.server, args.steps, args.rate, args.evaluate_every, args.eval_episodes, args.seed,
                      args.token, report)
    except ApiError as err:
        print(f"the server refused: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps({"summary": summary}) if args.json else
          f"taught {summary['taught_steps']} steps in {summary['episodes']} episodes (mean return "
          f"{summary['mean_return']:.1f}), {summary['evaluations']} evaluation episodes, {summary['steps_per_s']} "
          f"steps/s, {summary['late_ticks']} late ticks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
