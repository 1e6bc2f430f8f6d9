"""Sample efficiency and update cost: CartPole-v1, Pendulum-v1 and Acrobot-v1, several seeds, one table.

    python benchmarks/learning.py --envs cartpole --seeds 0 1 2 3 4 --steps 10000   # the defaults, as a user gets them
    python benchmarks/learning.py --envs cartpole --seeds 0 1 2 3 4 --steps 10000 --extend --out DIR
                                                       # a 5,000-step screen in DIR confirmed at 10,000: each run continues
    python benchmarks/learning.py --envs cartpole --presets none seed_values --steps 10000  # the defaults beside the seed's numbers
    python benchmarks/learning.py --envs cartpole --presets actor_lr=3e-5 entropy_coef=0.01  # one seed value at a time
    python benchmarks/learning.py --baselines          # + stable-baselines3 PPO and DQN rows on CartPole
    python benchmarks/learning.py --envs cartpole --set pixels=true --set replay_ratio=0.25 --threshold 200 --steps 50000
                                                       # CartPole from 84x84x3 frames

Prints env, seed, steps to threshold (first eval mean >= threshold) and the training wall seconds
to it, final eval return, wall seconds, updates per second and the time of one full update split
into world model, imagination, actor backward and critic; then, per run, every evaluation with the
critic's value at the eval episodes' first observations beside the discounted return observed from
them. Results go to docs/results.md by hand, with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from reverie.trainer.config import build_config
from reverie.trainer.loop import Trainer
from reverie.runs import RunDir
from update_speed import time_parts  # benchmarks/, the folder of this script, is on sys.path

THRESHOLDS = {"cartpole": ("CartPole-v1", 475.0), "pendulum": ("Pendulum-v1", -200.0), "acrobot": ("Acrobot-v1", -100.0),
              "pong": ("ALE/Pong-v5", 0.0)}


def time_update(trainer: Trainer) -> dict[str, float]:
    """Milliseconds of each part of one full update, on the trained agent and its replay."""
    return time_parts(trainer.agent, trainer.learner.sample_batch, 20)


def run_reverie(env: str, preset: str, seed: int, steps: int | None, out: Path, threads: int | None = None,
                eval_every: int | None = None, common: tuple[str, ...] = (), threshold: float | None = None,
                extend: bool = False) -> dict:
    """One training run. `preset`: "env" (the env's own preset), "none" (the defaults), a preset name,
    or `key=value` (the defaults with that one key changed: the measured effect of one setting).
    `common`: key=value overrides of every run (`--set`), e.g. a partially observed env; `threshold`:
    the eval return that counts as reached, when not the env's. `extend`: a run `out` already holds
    goes on from its newest checkpoint to `steps` (its saved configuration and generators, as
    `reverie train --resume` would), and the row covers all of it."""
    env_id, env_threshold = THRESHOLDS[env]
    threshold = env_threshold if threshold is None else threshold
    override = "=" in preset
    name = None if override or preset == "none" else env if preset == "env" else preset
    cfg = build_config(name, [*common, *([preset] if override else [])], env_id=env_id, seed=seed, total_steps=steps,
                       threads=threads, eval_every=eval_every)
    run_dir = out / re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join([env, *common, preset, f"seed{seed}"]))
    resume = extend and RunDir(run_dir).latest_checkpoint() is not None
    trainer = Trainer(cfg, run_dir, resume=resume, given=frozenset({"threads"} if threads else ()))
    start, first_step, first_updates = time.perf_counter(), trainer.env_step, trainer.updates  # 0, 0 unless extended
    trainer.run()
    wall = time.perf_counter() - start
    evals = [(r["env_step"], r["eval_return"], r.get("eval_value"), r.get("eval_discounted_return"), r.get("eval_terminated"),
              off_track(r) if env_id == "CartPole-v1" else None)
             for r in RunDir(run_dir).metrics() if "eval_return" in r]
    reached = next((s for s, v, *_ in evals if v >= threshold), None)
    parts = time_update(trainer)
    return {"agent": f"reverie ({' '.join([*common, preset])})", "env": env_id, "seed": seed, "steps_to_threshold": reached,
            "final_eval": evals[-1][1] if evals else None, "wall_s": wall,
            "updates_per_s": (trainer.updates - first_updates) / wall, "env_steps_per_s": (trainer.env_step - first_step) / wall,
            "update_ms": parts,
            "evals": evals, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process's, so far
            "threshold": threshold, "wall_to_threshold": _wall_at(run_dir, reached)}


def off_track(row: dict) -> int | None:
    """CartPole: how many of an evaluation's episodes ended with the cart past the track's end (its
    position, the observation's first entry, beyond the env's x_threshold of 2.4); its other terminal
    endings are the pole falling. None for a row that recorded no endings (written before they were)."""
    ends = row.get("eval_terminal_obs")
    return None if ends is None else sum(abs(obs[0]) > 2.4 for obs in ends)


def _wall_at(run_dir: Path, step: int | None) -> float | None:
    """Training wall seconds at the logged row of `step` (None when never reached)."""
    return next((r["wall_s"] for r in RunDir(run_dir).metrics() if r["env_step"] == step), None) if step else None


def run_sb3(algo: str, seed: int, eval_every: int = 2000) -> dict:
    """stable-baselines3 with rl-baselines3-zoo's tuned CartPole-v1 hyperparameters."""
    import gymnasium as gym
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from reverie.evaluation import evaluate_policy

    if algo == "PPO":
        env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
        lin = lambda v: (lambda progress: progress * v)  # noqa: E731
        model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                    ent_coef=0.0, learning_rate=lin(0.001), clip_range=lin(0.2), seed=seed, verbose=0)
        budget = 100_000
    else:
        env = gym.make("CartPole-v1")
        model = DQN("MlpPolicy", env, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
                    gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
                    exploration_fraction=0.16, exploration_final_eps=0.04,
                    policy_kwargs={"net_arch": [256, 256]}, seed=seed, verbose=0)
        budget = 50_000
    evals: list[tuple[int, float]] = []
    eval_env = gym.make("CartPole-v1")

    class Every(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps // eval_every > len(evals):
                act = lambda obs: int(model.predict(obs, deterministic=True)[0])  # noqa: E731
                evals.append((self.num_timesteps, float(np.mean(evaluate_policy(act, "CartPole-v1", 10, seed, eval_env)))))
            return True

    start = time.perf_counter()
    model.learn(budget, callback=Every())
    wall = time.perf_counter() - start
    reached = next((s for s, v in evals if v >= 475.0), None)
    return {"agent": f"sb3 {algo}", "env": "CartPole-v1", "seed": seed, "steps_to_threshold": reached,
            "final_eval": evals[-1][1] if evals else None, "wall_s": wall, "updates_per_s": None,
            "update_ms": None, "evals": evals}


def print_table(rows: list[dict]) -> None:
    header = ("agent", "env", "seed", "steps to thr.", "wall s to thr.", "final eval", "wall s", "upd/s", "env steps/s",
              "peak MB", "WM ms", "imag ms", "actor ms", "critic ms")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    fmt = lambda v, spec="": "–" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        ms = r["update_ms"] or {}
        print("| " + " | ".join([
            r["agent"], r["env"], str(r["seed"]), fmt(r["steps_to_threshold"], ","), fmt(r.get("wall_to_threshold"), ".0f"),
            fmt(r["final_eval"], ".1f"), fmt(r["wall_s"], ".0f"), fmt(r["updates_per_s"], ".1f"),
            fmt(r.get("env_steps_per_s"), ".1f"), fmt(r.get("peak_mb"), ",.0f"),
            fmt(ms.get("world_model"), ".1f"), fmt(ms.get("imagination"), ".1f"), fmt(ms.get("actor"), ".1f"),
            fmt(ms.get("critic"), ".1f"),
        ]) + " |")
    print_summary(rows)


def held(r: dict) -> tuple[int, int]:
    """(later evaluations within 75/475 of the threshold's size below it, all later ones): how well a
    run holds after its first success (400 for CartPole's 475)."""
    first = r["steps_to_threshold"]
    hold = r["threshold"] - abs(r["threshold"]) * 75 / 475
    later = [ret for step, ret, *_ in r["evals"] if first is not None and step > first]
    return sum(v >= hold for v in later), len(later)


def print_summary(rows: list[dict]) -> None:
    """Per agent and env, over its seeds: the median and the worst seed's steps to threshold, the
    share of later evaluations that held, and the most episodes of one evaluation (from 3,000 env
    steps on) that ended in a terminal state (CartPole: the pole fell or the cart left the track) and,
    on CartPole, with the cart off the track."""
    print("\n| agent | env | seeds | median steps to thr. | worst seed | later evals held (all seeds) | "
          "worst seed held | most terminated of one eval from 3,000 | most off the track |")
    print("|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "never" if v == float("inf") else f"{v:,.0f}"  # noqa: E731
    for env in sorted({r["env"] for r in rows}):
        for agent in sorted({r["agent"] for r in rows if r["env"] == env and not r["agent"].startswith("sb3")}):
            runs = [r for r in rows if r["env"] == env and r["agent"] == agent]
            reached = sorted(r["steps_to_threshold"] if r["steps_to_threshold"] is not None else float("inf") for r in runs)
            holds = [held(r) for r in runs]
            shares = [h / n for h, n in holds if n]
            ended = [e[4] for r in runs for e in r["evals"] if e[0] >= 3000 and len(e) > 4 and e[4] is not None]
            off = [e[5] for r in runs for e in r["evals"] if e[0] >= 3000 and len(e) > 5 and e[5] is not None]
            worst = max(runs, key=lambda r: (r["steps_to_threshold"] is None, r["steps_to_threshold"] or 0))
            print(f"| {agent} | {env} | {len(runs)} | {fmt(statistics.median(reached))} | "
                  f"{fmt(reached[-1])} (seed {worst['seed']}) | {sum(h for h, _ in holds)}/{sum(n for _, n in holds)} | "
                  f"{f'{min(shares):.0%}' if shares else '–'} | {max(ended) if ended else '–':} | "
                  f"{max(off) if off else '–'} |")


def print_evaluations(rows: list[dict]) -> None:
    """Per run, every evaluation: return, the critic's value at the episodes' first observations,
    the discounted return that actually followed, and after the first success the share of later
    evaluations within 95% x 400/475 of the threshold (how well a solved run holds)."""
    for r in rows:
        if r["agent"].startswith("sb3"):
            continue
        print(f"\n{r['agent']} {r['env']} seed {r['seed']}: step eval_return critic_value observed_discounted_return "
              "terminated off_track")
        nan = float("nan")
        for step, ret, value, observed, *endings in r["evals"]:
            ended, off = [e if e is not None else nan for e in endings] + [nan] * (2 - len(endings))
            print(f"  {step:>6,} {ret:8.1f} {value if value is not None else nan:10.1f} "
                  f"{observed if observed is not None else nan:10.1f} {ended:5.0f} {off:5.0f}")
        kept, later = held(r)
        if later:
            print(f"  after first reaching {r['threshold']:g}: {kept}/{later} later evaluations held")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="*", default=["cartpole", "pendulum"], choices=sorted(THRESHOLDS))
    parser.add_argument("--presets", nargs="+", default=["none"],
                        help="'none' (the defaults), 'env' (the env's own preset), preset names, or key=value "
                             "(the defaults with one key changed); one row each")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of every run, e.g. --set 'obs_indices=[0,2]' (CartPole without velocities)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="eval return that counts as reached (default: the env's, CartPole 475, Pendulum -200)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps per run (default: the config's)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--out", default="runs/benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 with --jobs > 1, else the config's)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="runs in parallel processes, each with one torch thread (default: one per core this "
                             "process may use; wall times then share the CPU)")
    parser.add_argument("--baselines", action="store_true", help="add stable-baselines3 PPO and DQN on CartPole")
    parser.add_argument("--summarize", metavar="RESULTS", help="print the tables of a results.json(l) and exit")
    parser.add_argument("--extend", action="store_true",
                        help="continue the runs --out holds to --steps from their newest checkpoints (a screen "
                             "confirmed at a longer budget without training its first part again); runs it lacks start fresh")
    args = parser.parse_args()
    if args.summarize:
        text = Path(args.summarize).read_text()
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line]
        print_table(rows)
        print_evaluations(rows)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or (1 if args.jobs > 1 else None)
    # Seed by seed, every setting of a seed before the next seed: a comparison stopped early is still paired.
    runs = [(env, preset, seed, args.steps, out, threads, args.eval_every, tuple(args.set), args.threshold, args.extend)
            for env in args.envs for seed in args.seeds for preset in args.presets]
    partial = out / "results.jsonl"  # each run's row as it finishes (the summary of a stopped benchmark: --summarize)
    partial.unlink(missing_ok=True)
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row in tqdm(pool.map(run_reverie, *zip(*runs)), total=len(runs), desc="runs"):
            rows.append(row)
            with partial.open("a") as f:
                f.write(json.dumps(row) + "\n")
    if args.baselines:
        rows += [run_sb3(algo, seed) for algo in ("PPO", "DQN") for seed in args.seeds]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, jobs {args.jobs}, torch {torch.__version__}")
    print_table(rows)
    print_evaluations(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
