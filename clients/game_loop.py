"""The example game client: plays a gymnasium env with actions asked of the service over the network.

    python -m clients.game_loop --url http://127.0.0.1:8000 --episodes 10
    python -m clients.game_loop --memory session                                         # the server keeps the history
    python -m clients.game_loop --transport grpc --target 127.0.0.1:50051 --stream    # one ActStream
    python -m clients.game_loop --image-format raw                                      # frames as raw pixels, not PNG
    python -m clients.game_loop --teach --memory session --steps 2500 --rate 5         # report outcomes: the agent learns
    reverie teach runs/default/export --steps 2500                                      # act with the ONNX graphs here, upload

The env id comes from the served model unless given. Episodes use evaluation seeds of their
own (`--seed`), so they are not the trainer's evaluation episodes replayed. An agent with memory
(the manifest's history_length > 0) is sent each episode's last steps (`--memory history`, the
default: stateless, any replica can answer), or keeps them in a server `session` (`--memory
session`); an ActStream keeps its own and is told when an episode starts. A model that sees frames
(the manifest's `pixels`, or an Atari game) is played from the same frames the trainer saw: sent
as PNG files over REST (`--image-format`), as raw uint8 bytes over gRPC.

`--teach` makes the client a teacher for a trainer run with `--source clients`: in a session or on
an ActStream, each request reports the reward and end flags that followed the previous action
with the observation they led to, actions are sampled (the agent explores), and the game runs
at `--rate` steps per second, as a game runs at its tick rate. `reverie teach EXPORT_DIR [flags]`
runs this loop acting locally with the newest bundle's ONNX graphs (onnxruntime, as a robot without a
network round trip per step would) and uploading its steps in fragments (`POST /experience` or
UploadExperience); it is an entry point, since the graphs run in the service's Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from reverie import envs
from reverie.bundle import latest_bundle
from reverie.evaluation import evaluate_policy
from reverie.history import Recent

from .grpc_client import GrpcClient
from .rest import Action, RestClient

EPISODE_SEED_BASE = 10_000  # a teacher's episodes: seed s plays resets s * 10,000 + i


class Player:
    """`ask(obs) -> Action` over episodes, with the memory an agent needs: `act(obs, **memory)` is sent
    the episode's `history` (memory "history", when the model remembers any steps), told its `session`
    and when it restarts (memory "session"), only when an episode restarts (memory "stream"), or
    nothing (memory "none")."""

    def __init__(self, act: Callable, memory: str, history_length: int):
        self.act, self.memory = act, memory
        self.recent = Recent(history_length)
        self.session = f"game-{uuid.uuid4().hex[:12]}"
        self.first = True

    def start(self) -> None:
        self.recent.clear()
        self.first = True

    def __call__(self, obs, **outcome):
        """`outcome`: the reward and end flags that followed the last action (session and stream only)."""
        if self.memory == "history":
            step = self.act(obs, history=self.recent) if self.recent.observations.maxlen else self.act(obs)
        elif self.memory == "session":
            step = self.act(obs, session=self.session, reset=self.first, **outcome)
        elif self.memory == "stream":
            step = self.act(obs, reset=self.first, **outcome)
        else:  # "none": each observation alone, as a client that ignores the model's memory would ask
            step = self.act(obs)
        self.first = False
        self.recent.record(np.asarray(obs), step.action)  # frames stay uint8 (PNG or raw bytes on the wire)
        return step


def play(ask: Callable, spec: envs.EnvSpec, episodes: int, seed: int, start: Callable | None = None) -> dict:
    """Play `episodes` episodes of the env as `spec` (the served model's, from its manifest) shows it,
    with `ask(obs) -> Action` (`start()` before each); the summary a game team would look at."""
    versions: list[int] = []
    latencies: list[float] = []

    def act(obs):
        started = time.perf_counter()
        step = ask(obs)
        latencies.append(time.perf_counter() - started)
        versions.append(step.model_version)
        return step.action if isinstance(step.action, int) else np.asarray(step.action, np.float32)

    returns = evaluate_policy(act, spec, episodes, seed, start=start)
    return {
        "env_id": spec.env_id, "episodes": episodes, "mean_return": float(np.mean(returns)), "returns": returns,
        "requests": len(versions), "model_versions": sorted(set(versions)),
        "versions_monotonic": all(a <= b for a, b in zip(versions, versions[1:])),
        "latency_ms_p50": 1000 * float(np.percentile(latencies, 50)),
        "latency_ms_p99": 1000 * float(np.percentile(latencies, 99)),
    }


class LocalTeacher:
    """A teacher that acts with the newest bundle in `export_dir` (checked at each episode's start) and
    uploads each episode in fragments of at most `fragment_steps` steps with `upload(fragments)`.
    `load(bundle)` opens a bundle's graphs (the service's `Runtime.load`: onnxruntime, the `serve`
    extra, which the other clients do without; `reverie teach` passes it)."""

    def __init__(self, export_dir: Path, upload: Callable, fragment_steps: int, load: Callable):
        self.export_dir, self.upload, self.fragment_steps, self.load = Path(export_dir), upload, fragment_steps, load
        self.runtime = None
        self.recent = Recent(0)

    def start(self) -> None:
        bundle = latest_bundle(self.export_dir)
        if bundle is None:
            raise FileNotFoundError(f"no bundle under {self.export_dir}")
        if self.runtime is None or self.runtime.bundle != bundle:
            self.runtime = self.load(bundle)
            self.recent = Recent(self.runtime.history_length)
        self.recent.clear()
        self.episode, self.index = f"local-{uuid.uuid4().hex[:12]}", 0
        self.fragment = {"observations": [], "actions": [], "rewards": [], "model_versions": []}

    def __call__(self, obs, reward: float | None = None, terminated: bool = False, truncated: bool = False):
        f = self.fragment
        if reward is not None:
            f["rewards"].append(reward)
            if terminated or truncated or len(f["rewards"]) == self.fragment_steps:
                self.upload([{**f, "observations": [*f["observations"], obs], "episode": self.episode,
                              "index": self.index, "terminated": terminated, "truncated": truncated}])
                self.index += 1
                self.fragment = f = {key: [] for key in f}
            if terminated or truncated:
                return None  # the final observation: nothing to play
        runtime = self.runtime
        obs = np.asarray(obs, runtime.manifest.observation_space.dtype)
        result = runtime.act(obs[None].astype(np.float32), deterministic=False, seed=None,
                             history=runtime.history(self.recent.observations, self.recent.actions))
        self.recent.record(obs, result.agent_actions[0])
        f["observations"].append(obs)
        f["actions"].append(result.actions[0])
        f["model_versions"].append(runtime.version)
        return Action(result.actions[0], float(result.values[0]), runtime.version)


def teach(player: Player | LocalTeacher, spec: envs.EnvSpec, steps: int, seed: int, rate: float | None) -> dict:
    """Play until `steps` env steps, reporting every outcome (an episode's last one with its final
    observation, whose answer is not played), at most `rate` steps per second; every episode's
    return, with the wall time and client step count at its end and the model versions that played it."""
    env, tick = envs.make(spec), 1.0 / rate if rate else 0.0
    started, done, played = time.perf_counter(), 0, []
    while done < steps:
        player.start()
        obs, _ = env.reset(seed=EPISODE_SEED_BASE * seed + len(played))
        outcome, total, versions = {}, 0.0, set()
        while True:
            step = player(obs, **outcome)
            if outcome.get("terminated") or outcome.get("truncated"):
                break
            versions.add(step.model_version)
            action = step.action if isinstance(step.action, int) else np.asarray(step.action, np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            done += 1
            total += float(reward)
            outcome = {"reward": float(reward), "terminated": bool(terminated), "truncated": bool(truncated)}
            if tick:
                time.sleep(max(0.0, started + done * tick - time.perf_counter()))
        played.append({"wall_s": round(time.perf_counter() - started, 2), "client_steps": done, "return": total,
                       "model_versions": sorted(versions)})
        print(json.dumps({"episode": len(played), **played[-1]}), file=sys.stderr, flush=True)
    return {"env_id": spec.env_id, "episodes": len(played), "steps": done, "played": played,
            "mean_return": float(np.mean([e["return"] for e in played]))}


def main(argv: list[str] | None = None, load: Callable | None = None) -> int:
    """`load`: what opens a bundle for `--local` (given by `reverie teach`, the entry point that may)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="REST base URL")
    parser.add_argument("--target", default="127.0.0.1:50051", help="gRPC host:port")
    parser.add_argument("--stream", action="store_true", help="gRPC: one ActStream for the whole game")
    parser.add_argument("--memory", choices=("history", "session", "none"), default="history",
                        help="for an agent with memory: send each episode's last steps, let the server keep them, "
                             "or send neither (each observation alone)")
    parser.add_argument("--image-format", choices=("png", "raw", "json"), default="png",
                        help="REST: how frames travel (a PNG file, raw pixels, or numbers), base64 in JSON")
    parser.add_argument("--env", default=None, help="default: the served model's env")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7, help="episode seeds (the trainer evaluates with the run's seed)")
    parser.add_argument("--sample", action="store_true", help="sample actions instead of the most likely one")
    parser.add_argument("--token", default=os.environ.get("REVERIE_API_TOKEN"), help="bearer token (env REVERIE_API_TOKEN)")
    parser.add_argument("--teach", action="store_true",
                        help="report each action's outcome so the agent learns (needs --memory session or --stream)")
    parser.add_argument("--steps", type=int, default=2500, help="--teach: env steps to play")
    parser.add_argument("--rate", type=float, default=None, help="--teach: at most this many env steps per second")
    parser.add_argument("--local", default=None, metavar="EXPORT_DIR",
                        help="--teach: act here with the newest bundle in EXPORT_DIR and upload the steps")
    parser.add_argument("--fragment-steps", type=int, default=50, help="--local: steps per uploaded fragment")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if args.stream and args.transport != "grpc":
        parser.error("--stream needs --transport grpc")
    if args.local and not args.teach:
        parser.error("--local acts here to upload what it plays: add --teach")
    if args.local and load is None:
        parser.error("--local runs the bundle with onnxruntime: use `reverie teach EXPORT_DIR ...` (the serve extra)")
    if args.teach and not (args.local or args.stream or args.memory == "session"):
        parser.error("--teach reports outcomes in a session or on an ActStream, or uploads: add --memory session, --stream or --local")
    deterministic = not (args.sample or args.teach)  # a teacher explores
    client = (RestClient(args.url, token=args.token, image_format=args.image_format) if args.transport == "rest"
              else GrpcClient(args.target, token=args.token))
    with client:
        client.wait_ready()
        manifest = client.model()["manifest"]
        spec = envs.EnvSpec.of(manifest)
        spec = replace(spec, env_id=args.env or spec.env_id)
        length = int(manifest.get("history_length") or 0)
        run = ((lambda player: teach(player, spec, args.steps, args.seed, args.rate)) if args.teach else
               (lambda player: play(player, spec, args.episodes, args.seed, player.start)))
        if args.local:
            summary = run(LocalTeacher(Path(args.local), client.upload, args.fragment_steps, load))
        elif args.stream:
            with client.stream(deterministic) as stream:
                summary = run(Player(stream.act, "stream", length))
        else:
            summary = run(Player(lambda obs, **memory: client.act(obs, deterministic=deterministic, **memory),
                                 args.memory, length))
    summary["transport"] = "grpc-stream" if args.stream else args.transport
    summary["memory"] = "stream" if args.stream else args.memory
    if args.json:
        print(json.dumps(summary))
    elif args.teach:
        print(f"{summary['env_id']}: taught {summary['steps']} steps in {summary['episodes']} episodes, mean return "
              f"{summary['mean_return']:.1f} (last {summary['played'][-1]['return']:.0f})")
    else:
        print(f"{summary['env_id']}: mean return {summary['mean_return']:.1f} over {args.episodes} episodes "
              f"({summary['requests']} actions, model versions {summary['model_versions']}, "
              f"latency p50 {summary['latency_ms_p50']:.2f} ms, p99 {summary['latency_ms_p99']:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
