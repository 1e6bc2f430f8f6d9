"""The example game client: plays a gymnasium env with actions asked of the service over the network.

    python -m clients.game_loop --url http://127.0.0.1:8000 --episodes 10
    python -m clients.game_loop --transport grpc --target 127.0.0.1:50051 --stream    # one ActStream

The env id comes from the served model unless given. Episodes use evaluation seeds of their
own (`--seed`), so they are not the trainer's evaluation episodes replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Callable

import numpy as np

from reverie.evaluation import evaluate_policy

from .grpc_client import GrpcClient
from .rest import RestClient


def play(ask: Callable, env_id: str, episodes: int, seed: int, obs_indices: list[int] | None = None) -> dict:
    """Play `episodes` episodes with `ask(obs) -> Action`, showing it `obs_indices` of each observation
    (the served model's, from its manifest); the summary a game team would look at."""
    versions: list[int] = []
    latencies: list[float] = []

    def act(obs):
        started = time.perf_counter()
        step = ask(obs)
        latencies.append(time.perf_counter() - started)
        versions.append(step.model_version)
        return step.action if isinstance(step.action, int) else np.asarray(step.action, np.float32)

    returns = evaluate_policy(act, env_id, episodes, seed, obs_indices=obs_indices)
    return {
        "env_id": env_id, "episodes": episodes, "mean_return": float(np.mean(returns)), "returns": returns,
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
    client = RestClient(args.url, token=args.token) if args.transport == "rest" else GrpcClient(args.target, token=args.token)
    with client:
        client.wait_ready()
        manifest = client.model()["manifest"]
        env_id, obs_indices = args.env or manifest["env_id"], manifest.get("obs_indices") or None  # gRPC has no null: []
        if args.stream:
            with client.stream(deterministic) as stream:
                summary = play(stream.act, env_id, args.episodes, args.seed, obs_indices)
        else:
            summary = play(lambda obs: client.act(obs, deterministic=deterministic), env_id, args.episodes, args.seed,
                           obs_indices)
    summary["transport"] = "grpc-stream" if args.stream else args.transport
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['env_id']}: mean return {summary['mean_return']:.1f} over {args.episodes} episodes "
              f"({summary['requests']} actions, model versions {summary['model_versions']}, "
              f"latency p50 {summary['latency_ms_p50']:.2f} ms, p99 {summary['latency_ms_p99']:.2f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
