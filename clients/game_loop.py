"""The example game client: plays a gymnasium env with actions asked of the service over the network.

    python -m clients.game_loop --url http://127.0.0.1:8000 --episodes 10
    python -m clients.game_loop --memory session                                         # the server keeps the history
    python -m clients.game_loop --transport grpc --target 127.0.0.1:50051 --stream    # one ActStream
    python -m clients.game_loop --image-format raw                                      # frames as raw pixels, not PNG

The env id comes from the served model unless given. Episodes use evaluation seeds of their
own (`--seed`), so they are not the trainer's evaluation episodes replayed. An agent with memory
(the manifest's history_length > 0) is sent each episode's last steps (`--memory history`, the
default: stateless, any replica can answer), or keeps them in a server `session` (`--memory
session`); an ActStream keeps its own and is told when an episode starts. A model that sees frames
(the manifest's `pixels`, or an Atari game) is played from the same frames the trainer saw: sent
as PNG files over REST (`--image-format`), as raw uint8 bytes over gRPC.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from dataclasses import replace
from typing import Callable

import numpy as np

from reverie import envs
from reverie.evaluation import evaluate_policy
from reverie.history import Recent

from .grpc_client import GrpcClient
from .rest import RestClient


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

    def __call__(self, obs):
        if self.memory == "history":
            step = self.act(obs, history=self.recent) if self.recent.observations.maxlen else self.act(obs)
        elif self.memory == "session":
            step = self.act(obs, session=self.session, reset=self.first)
        elif self.memory == "stream":
            step = self.act(obs, reset=self.first)
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


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if args.stream and args.transport != "grpc":
        parser.error("--stream needs --transport grpc")
    deterministic = not args.sample
    client = (RestClient(args.url, token=args.token, image_format=args.image_format) if args.transport == "rest"
              else GrpcClient(args.target, token=args.token))
    with client:
        client.wait_ready()
        manifest = client.model()["manifest"]
        spec = envs.EnvSpec.of(manifest)
        spec = replace(spec, env_id=args.env or spec.env_id)
        length = int(manifest.get("history_length") or 0)
        if args.stream:
            with client.stream(deterministic) as stream:
                player = Player(stream.act, "stream", length)
                summary = play(player, spec, args.episodes, args.seed, player.start)
        else:
            player = Player(lambda obs, **memory: client.act(obs, deterministic=deterministic, **memory), args.memory, length)
            summary = play(player, spec, args.episodes, args.seed, player.start)
    summary["transport"] = "grpc-stream" if args.stream else args.transport
    summary["memory"] = "stream" if args.stream else args.memory
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['env_id']}: mean return {summary['mean_return']:.1f} over {args.episodes} episodes "
              f"({summary['requests']} actions, model versions {summary['model_versions']}, "
              f"latency p50 {summary['latency_ms_p50']:.2f} ms, p99 {summary['latency_ms_p99']:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
