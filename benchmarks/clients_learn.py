"""Does the served agent learn from its clients? `reverie up --source clients` on CartPole-v1 with
game-loop clients in processes of their own, each playing at a game's tick rate and teaching: over a
REST session or a gRPC ActStream (outcome reports), or acting with the bundle's ONNX graphs and
uploading fragments. Prints the trainer's evaluations against the client steps played and learned
from, with wall time, and each client's own episode returns, early and late.

    python benchmarks/clients_learn.py                                          # 2 REST sessions + 2 ActStreams
    python benchmarks/clients_learn.py --clients local-rest local-rest local-grpc local-grpc   # uploaders
    python benchmarks/clients_learn.py --redis --kill-replica-after 120   # 2 replicas, one Redis stream

With --redis, a redis-server on a loopback port holds the log, and a second `reverie serve` replica
beside `reverie up` takes every other client; --kill-replica-after kills it with SIGKILL mid-run.
The run stops once the clients have played --after-target steps past the first evaluation at
--target (so they play the models that reached it), or when they have played --steps in all and the
trainer has learned from everything they sent.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from reverie.clients.rest import RestClient  # noqa: E402
from reverie.runs import RunDir  # noqa: E402
from loopback import RedisServer  # noqa: E402 (support/, on sys.path above)

CLIENTS = {  # kind -> the teacher's command after `python -m` (EXPORT is the run's export folder)
    "rest-session": ["reverie.clients.game_loop", "--teach", "--transport", "rest", "--memory", "session"],
    "grpc-stream": ["reverie.clients.game_loop", "--teach", "--transport", "grpc", "--stream"],
    "local-rest": ["reverie.cli", "teach", "EXPORT", "--transport", "rest"],
    "local-grpc": ["reverie.cli", "teach", "EXPORT", "--transport", "grpc"],
}


def episodes_of(path: Path) -> list[dict]:
    """A teacher's episode lines (stderr), each with the wall time it was read at."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"episode"')]


def by_version(teachers: list) -> dict[int, list[float]]:
    """The clients' episode returns, by the model version that played the whole episode."""
    out: dict[int, list[float]] = {}
    for _, log, _ in teachers:
        for e in episodes_of(log):
            if len(e["model_versions"]) == 1:
                out.setdefault(e["model_versions"][0], []).append(e["return"])
    return dict(sorted(out.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", nargs="+", choices=sorted(CLIENTS),
                        default=["rest-session", "rest-session", "grpc-stream", "grpc-stream"])
    parser.add_argument("--steps", type=int, default=10_000, help="client env steps in all, split evenly")
    parser.add_argument("--rate", type=float, default=2.0, help="env steps per second per client (its tick rate)")
    parser.add_argument("--target", type=float, default=475.0, help="the evaluation return to reach")
    parser.add_argument("--after-target", type=int, default=2000, help="client steps played past the target, then stop")
    parser.add_argument("--redis", action="store_true", help="the log on Redis Streams, with a second server replica")
    parser.add_argument("--kill-replica-after", type=float, default=None, metavar="S",
                        help="--redis: kill -9 the second replica S seconds after the clients start")
    parser.add_argument("--run-dir", default=None, help="default: runs/clients-<time>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trainer config override")
    parser.add_argument("--port", type=int, default=8321)
    parser.add_argument("--grpc-port", type=int, default=8322)
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()

    run_dir = Path(args.run_dir or f"runs/clients-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    redis, replica, experience = None, None, []
    if args.redis:  # the tests' redis-server: loopback, every write synced
        redis = RedisServer().__enter__()
        experience = ["--experience", redis.stream("clients-learn")]
    up = subprocess.Popen([sys.executable, "-m", "reverie.cli", "up", "--source", "clients", "--run-dir", str(run_dir),
                           "--port", str(args.port), "--grpc-port", str(args.grpc_port), *experience,
                           *[a for item in args.set for a in ("--set", item)]],
                          stdout=open(run_dir / "up.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    servers = [(f"http://127.0.0.1:{args.port}", f"127.0.0.1:{args.grpc_port}")]
    with RestClient(servers[0][0]) as client:
        client.wait_ready(timeout=180)
    if args.redis:
        replica = subprocess.Popen([sys.executable, "-m", "reverie.cli", "serve", "--models", str(run_dir), *experience,
                                    "--port", str(args.port + 3), "--grpc-port", str(args.port + 4)],
                                   stdout=open(run_dir / "replica.log", "w"), stderr=subprocess.STDOUT)
        servers.append((f"http://127.0.0.1:{args.port + 3}", f"127.0.0.1:{args.port + 4}"))
        with RestClient(servers[1][0]) as client:
            client.wait_ready(timeout=180)
    started = time.time()
    teachers = []
    for i, kind in enumerate(args.clients):
        flags = [str(RunDir(run_dir).export) if flag == "EXPORT" else flag for flag in CLIENTS[kind]]
        log = run_dir / f"client-{i}-{kind}.log"
        url, target = servers[i % len(servers)]
        teachers.append((kind, log, subprocess.Popen(
            [sys.executable, "-m", *flags, "--url", url, "--target", target,
             "--steps", str(args.steps // len(args.clients)), "--rate", str(args.rate), "--seed", str(i), "--json"],
            stdout=subprocess.DEVNULL, stderr=open(log, "w"))))

    evals, reached, quiet_since, last_step, seen = [], None, time.time(), -1, 0
    try:
        while time.time() - started < args.timeout:
            time.sleep(1.0)
            rows = RunDir(run_dir).metrics()
            played = sum(e[-1]["client_steps"] for e in (episodes_of(log) for _, log, _ in teachers) if e)
            for index, row in enumerate(rows[seen:], seen):
                if "eval_return" in row:
                    evals.append({"row_index": index, "learned": row["env_step"], "played": played,
                                  "wall_s": round(time.time() - started, 1), "eval": row["eval_return"]})
                    print(f"{evals[-1]['wall_s']:>7.1f} s  played {played:>6,}  learned {row['env_step']:>6,}  "
                          f"eval {row['eval_return']:.1f}", flush=True)
            seen = len(rows)
            if replica is not None and args.kill_replica_after and time.time() - started > args.kill_replica_after:
                replica.kill()
                replica.wait()
                print(f"{time.time() - started:>7.1f} s  killed the second replica (SIGKILL)", flush=True)
                replica = None
            reached = reached or next((e for e in evals if e["eval"] >= args.target), None)
            if reached and played >= reached["played"] + args.after_target:
                break
            step = rows[-1]["env_step"] if rows else 0
            if step != last_step:
                last_step, quiet_since = step, time.time()
            if all(p.poll() is not None for _, _, p in teachers) and time.time() - quiet_since > 60:
                break  # the clients are done and the trainer has had nothing new for a minute
    finally:
        for _, _, process in teachers:
            process.terminate()
        up.send_signal(signal.SIGINT)
        up.wait(timeout=300)
        if replica is not None:
            replica.terminate()
        if redis is not None:
            redis.__exit__()

    rows = RunDir(run_dir).metrics()
    print(f"\nCartPole-v1, reverie up --source clients, {len(args.clients)} clients ({', '.join(args.clients)}) "
          f"at {args.rate:g} steps/s each" + (", the log on Redis, 2 replicas" if args.redis else "") +
          f"; run dir {run_dir}\n")
    print("| wall s | client steps played | learned from | eval return | clients' episode return (since last eval) | staleness (versions) |")
    print("|---|---|---|---|---|---|")
    previous = 0
    for e in evals:
        window = rows[previous:e["row_index"] + 1]
        returns = [r["client_episode_return"] for r in window if "client_episode_return" in r]
        lags = [r["client_staleness_mean"] for r in window if "client_staleness_mean" in r]
        print(f"| {e['wall_s']:.0f} | {e['played']:,} | {e['learned']:,} | {e['eval']:.1f} | "
              f"{np.mean(returns) if returns else float('nan'):.1f} | {np.mean(lags) if lags else float('nan'):.2f} |")
        previous = e["row_index"] + 1
    print(f"\nfirst eval >= {args.target:g}: " + (f"after {reached['played']:,} client steps played "
          f"({reached['learned']:,} learned from), {reached['wall_s']:.0f} s" if reached else "not reached"))
    print("\n| client | kind | episodes | steps | exit code |")
    print("|---|---|---|---|---|")
    for i, (kind, log, process) in enumerate(teachers):
        played = episodes_of(log)
        print(f"| {i} | {kind} | {len(played)} | {played[-1]['client_steps'] if played else 0:,} | {process.wait()} |")
    print("\nThe clients' own episodes, by the model version that played them:\n")
    print("| model version | episodes | mean return | min | max |")
    print("|---|---|---|---|---|")
    for version, returns in by_version(teachers).items():
        print(f"| {version} | {len(returns)} | {np.mean(returns):.1f} | {min(returns):.0f} | {max(returns):.0f} |")
    return 0 if reached else 1


if __name__ == "__main__":
    raise SystemExit(main())
