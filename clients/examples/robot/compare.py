"""The robot taught over the network against the trainer's own gymnasium env: the same task, defaults and seed.

    python clients/examples/robot/compare.py --steps 20000 --seed 0 --rate 25 --out runs/robot-compare

Two runs, one after the other (not side by side: they would share the CPU), each learning from `--steps`
env steps with the defaults (`--set KEY=VALUE` goes to both):

- env: `reverie train --env InvertedPendulum-v5 --seed S --steps N`; every `eval_every` (500) steps the
  trainer plays `eval_episodes` (10) greedy episodes in its own env.
- client: `reverie up --spaces clients/examples/robot/spaces.json --set seed=S --set total_steps=N` and the
  robot example (`pendulum.py`, MuJoCo without gymnasium) teaching it over a gRPC ActStream at `--rate`
  control steps per second; every `--evaluate-every` taught episodes it plays 3 evaluation episodes (greedy,
  one model version each), and the trainer logs a version's eval_return once it has 3 of them.

It prints both curves: greedy return against the env steps the evaluated policy had learned from (env:
the step the evaluation ran at; client: the evaluated version's `training_step`, read from its manifest
while the run goes), with the update rounds done by then (a client slower than the trainer gets up to
`idle_replay_ratio` rounds per step, a faster one fewer than `replay_ratio`: compare them too). It writes
OUT/compare.json and OUT/compare.png. `--only env|client` runs one side; a side whose run directory
already holds a finished run is read, not run again (delete it to rerun).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pendulum  # the example beside this one (this script's folder is on sys.path)
from reverie.clients.grpc_client import GrpcClient
from reverie.runs import RunDir

ENV_ID = "InvertedPendulum-v5"


def updates_at(rows: list[dict], step: int) -> int | None:
    """The update rounds the trainer had done when it had learned from `step` env steps (the last row at or before)."""
    done = [r["updates"] for r in rows if r["env_step"] <= step]
    return done[-1] if done else None


def run_env(out: Path, steps: int, seed: int, sets: list[str]) -> list[dict]:
    run_dir = RunDir(out / "env")
    if not run_dir.metrics_file.exists():
        command = [sys.executable, "-m", "reverie.cli", "train", "--env", ENV_ID, "--seed", str(seed), "--steps", str(steps),
                   "--run-dir", str(run_dir.path), *[f"--set={s}" for s in sets]]
        print("env:", " ".join(command[1:]), flush=True)
        with (out / "env.log").open("w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = run_dir.metrics()
    return [{"env_step": r["env_step"], "eval_return": float(r["eval_return"]), "updates": r["updates"]}
            for r in rows if "eval_return" in r]


def run_client(out: Path, steps: int, seed: int, rate: float, evaluate_every: int, sets: list[str],
               finish_timeout: float, port: int, grpc_port: int) -> tuple[list[dict], dict]:
    run_dir = RunDir(out / "client")
    played_path = out / "client_played.jsonl"
    trained_path = out / "client_versions.json"
    if not run_dir.metrics_file.exists():
        command = [sys.executable, "-m", "reverie.cli", "up", "--spaces", str(pendulum.SPACES_JSON),
                   "--run-dir", str(run_dir.path), "--set", f"seed={seed}", "--set", f"total_steps={steps}",
                   *[f"--set={s}" for s in sets], "--follow", "latest", "--port", str(port), "--grpc-port", str(grpc_port)]
        print("client:", " ".join(command[1:]), flush=True)
        log = (out / "client.log").open("w")
        up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        trained: dict[int, int] = {}  # model version -> the env steps it had learned from (its manifest)
        stop = threading.Event()

        def watch_versions() -> None:  # exports are pruned (export_keep): read each manifest while it is there
            while not stop.wait(0.5):
                for manifest in run_dir.export.glob("v*/manifest.json"):
                    try:
                        m = json.loads(manifest.read_text())
                        trained.setdefault(int(m["model_version"]), int(m["training_step"]))
                    except (OSError, ValueError, KeyError):
                        pass

        watcher = threading.Thread(target=watch_versions, daemon=True)
        watcher.start()
        try:
            target = f"127.0.0.1:{grpc_port}"
            with GrpcClient(target) as client:
                client.wait_ready(600)
            with played_path.open("w") as played:
                def report(row: dict) -> None:
                    played.write(json.dumps(row) + "\n")
                    played.flush()
                    if row["kind"] == "evaluate":
                        print(f"  client evaluation: v{row['model_version']} returned {row['return']:.0f} "
                              f"({row['taught_steps']} steps taught, {row['wall_s']:.0f} s)", flush=True)

                summary = pendulum.run(target, steps, rate, evaluate_every, seed=seed, report=report)
            print(f"  client: {json.dumps(summary)}", flush=True)
            # The trainer learns the last steps and stops at total_steps (stale steps dropped never count: bounded wait).
            deadline = time.monotonic() + finish_timeout
            while time.monotonic() < deadline and "training finished" not in (out / "client.log").read_text():
                time.sleep(1)
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=180)
            except subprocess.TimeoutExpired:
                up.kill()
            stop.set()
            watcher.join()
            log.close()
        trained_path.write_text(json.dumps(trained))
    trained = {int(v): s for v, s in json.loads(trained_path.read_text()).items()} if trained_path.exists() else {}
    rows = run_dir.metrics()
    curve = []
    for r in rows:
        if "eval_return" in r:
            step = trained.get(r["eval_version"])
            curve.append({"env_step": step if step is not None else r["env_step"], "exact_step": step is not None,
                          "eval_return": float(r["eval_return"]), "eval_version": r["eval_version"],
                          "updates": updates_at(rows, step if step is not None else r["env_step"])})
    # A version the robot evaluated 3 times after the trainer had stopped (its last export, at total_steps)
    # has no eval_return row: its point is the same mean of its first 3 evaluation episodes, from the robot's rows.
    played = [json.loads(line) for line in played_path.read_text().splitlines()] if played_path.exists() else []
    returns: dict[int, list[float]] = {}
    for row in played:
        if row["kind"] == "evaluate":
            returns.setdefault(row["model_version"], []).append(row["return"])
    logged = {p["eval_version"] for p in curve}
    for version, episodes in sorted(returns.items()):
        if version not in logged and len(episodes) >= 3 and version in trained:
            curve.append({"env_step": trained[version], "exact_step": True, "eval_return": sum(episodes[:3]) / 3,
                          "eval_version": version, "updates": updates_at(rows, trained[version]), "from_client": True})
    curve.sort(key=lambda p: p["env_step"])
    last = rows[-1] if rows else {}
    pace = {"learned": last.get("env_step"), "updates": last.get("updates"),
            "updates_per_step": round(last["updates"] / max(last["env_step"], 1), 2) if last else None,
            "client_stale_dropped": sum(r.get("client_stale_dropped", 0) for r in rows),
            "client_steps_unpaid": sum(r.get("client_steps_unpaid", 0) for r in rows)}
    return curve, pace


def plot(out: Path, env_curve: list[dict], client_curve: list[dict], title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for curve, label in ((env_curve, f"reverie train --env {ENV_ID}"), (client_curve, "robot example over gRPC (--spaces)")):
        if curve:
            ax.plot([p["env_step"] for p in curve], [p["eval_return"] for p in curve], marker="o", label=label)
    ax.set_xlabel("env steps learned from")
    ax.set_ylabel("greedy (evaluation) return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = out / "compare.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="env steps each run learns from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=18761, help="the client run's REST port (its gRPC port: --grpc-port)")
    parser.add_argument("--grpc-port", type=int, default=18762)
    parser.add_argument("--rate", type=float, default=25.0, help="the robot's control steps per second (25: real time)")
    parser.add_argument("--evaluate-every", type=int, default=10,
                        help="the robot's taught episodes between evaluation rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for both runs")
    parser.add_argument("--only", choices=("env", "client", "both"), default="both")
    parser.add_argument("--out", default="runs/robot-compare")
    parser.add_argument("--finish-timeout", type=float, default=600,
                        help="seconds to wait for the client run's trainer to finish")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env_curve = run_env(out, args.steps, args.seed, args.set) if args.only in ("env", "both") else []
    env_wall = time.monotonic() - started
    client_curve, pace = ([], {})
    if args.only in ("client", "both"):
        client_curve, pace = run_client(out, args.steps, args.seed, args.rate, args.evaluate_every, args.set,
                                        args.finish_timeout, args.port, args.grpc_port)
    env_rows = RunDir(out / "env").metrics()
    env_pace = {}
    if env_rows:
        last = env_rows[-1]
        env_pace = {"learned": last["env_step"], "updates": last["updates"],
                    "updates_per_step": round(last["updates"] / max(last["env_step"], 1), 2)}
    result = {"steps": args.steps, "seed": args.seed, "rate": args.rate, "set": args.set, "env": env_curve,
              "client": client_curve, "env_pace": env_pace, "client_pace": pace, "env_wall_s": round(env_wall),
              "wall_s": round(time.monotonic() - started)}
    (out / "compare.json").write_text(json.dumps(result, indent=1))
    picture = plot(out, env_curve, client_curve, f"InvertedPendulum, seed {args.seed}, {args.steps} steps")

    print(f"\ngreedy return against env steps learned from (seed {args.seed}):")
    print(f"{'run':<8} {'env step':>9} {'eval return':>12} {'updates':>8}  version")
    for name, curve in (("env", env_curve), ("client", client_curve)):
        for p in curve:
            version = (f"v{p['eval_version']}" + ("" if p["exact_step"] else " (step: when evaluated)")
                       + (" (the robot's 3 episodes; the trainer had stopped)" if p.get("from_client") else "")
                       if "eval_version" in p else "")
            updates = p["updates"] if p["updates"] is not None else "-"
            print(f"{name:<8} {p['env_step']:>9} {p['eval_return']:>12.1f} {updates:>8}  {version}")
    for name, curve, p in (("env", env_curve, env_pace), ("client", client_curve, pace)):
        if curve:
            best = max(curve, key=lambda q: q["eval_return"])
            first = next((q["env_step"] for q in curve if q["eval_return"] >= 950), None)
            print(f"{name}: best {best['eval_return']:.1f} at {best['env_step']} steps; first >= 950 at "
                  f"{first if first is not None else 'never'}; {json.dumps(p)}")
    print(f"written: {out / 'compare.json'}" + (f", {picture}" if picture else ""))
    return 0 if not any(math.isnan(p["eval_return"]) for p in env_curve + client_curve) else 1


if __name__ == "__main__":
    raise SystemExit(main())
