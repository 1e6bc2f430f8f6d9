"""Full updates per second of the default vector config: this tree beside another revision, in one run.

    python benchmarks/update_speed.py --against e12e6f3          # today's tree vs the revision named
    python benchmarks/update_speed.py --threads 1 --rounds 5
    python benchmarks/update_speed.py --also "sequence_mode=true" --also "sequence_mode=true dynamics=transformer"

`--also` adds rows of this tree with those config overrides (sequence batches in sequence mode),
measured in the same rounds, so their cost is a ratio to the default's on the same machine.

The other revision is checked out into a temporary git worktree and measured by this same script in
a subprocess (so nothing of it is kept here); the two alternate round by round, so a noisy machine
slows both alike. Each round times `--updates` full updates (world model, actor, critic: batch 128,
horizon 15, CartPole-v1 data from random play) after a warm-up, and one update's parts. Prints the
median per tree and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(threads: int, updates: int, overrides: list[str]) -> dict[str, float]:
    """Milliseconds per full update and per part, on this interpreter's `trainer` package."""
    import numpy as np
    import torch

    from reverie.trainer.agent import Agent
    from reverie.trainer.config import UpdateCounts, build_config
    from reverie.trainer.envs import make_env, space_info
    from reverie.trainer.replay import Replay

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = build_config(None, overrides, threads=threads)
    env = make_env(cfg.env_spec) if hasattr(cfg, "env_spec") else make_env(cfg.env_id)  # older trees: no EnvSpec
    space = space_info(env)
    replay, rng = Replay(5000, space.obs_shape, (), env.observation_space.dtype), np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    for _ in range(2000):
        action = int(rng.integers(space.action_dim))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, np.asarray(action), reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    agent = Agent(cfg, space)
    agent.world_model.normalizer.update(torch.as_tensor(replay.observations()[:2000]))

    def sample():
        if getattr(cfg, "sequence_mode", False):
            return replay.sample_sequences(cfg.sequences_per_batch, cfg.sequence_length, rng)
        return replay.sample(cfg.batch_size, rng)

    full = UpdateCounts()
    for _ in range(10):
        agent.update(sample(), full, 0.0)
    times = []
    for _ in range(updates):
        batch = sample()
        start = time.perf_counter()
        agent.update(batch, full, 0.0)
        times.append(time.perf_counter() - start)
    median = lambda xs: 1000 * sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"update": median(times), **time_parts(agent, sample)}


def time_parts(agent, sample_batch, repeats: int = 10) -> dict[str, float]:
    """Median milliseconds of one update's parts: world model (with the re-encoding of the batch),
    imagination alone, the actor step minus its imagination, and the critic step."""
    import torch

    from reverie.trainer.imagination import imagine

    parts: dict[str, list[float]] = {"world_model": [], "imagination": [], "actor": [], "critic": []}
    for _ in range(repeats):
        batch = sample_batch()
        t0 = time.perf_counter()
        agent.world_model_step(batch)
        if hasattr(agent, "imagination_starts"):
            batch, states, next_states = agent.imagination_starts(batch)
        else:  # a revision from before sequence batches
            with torch.no_grad():
                states, next_states = agent.world_model.encode(torch.cat([batch["obs"], batch["next_obs"]])).chunk(2)
        t1 = time.perf_counter()
        with torch.set_grad_enabled(not getattr(agent, "reinforce", False)):  # as the actor step imagines
            imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
        t2 = time.perf_counter()
        _, imagined = agent.actor_step(states)
        t3 = time.perf_counter()
        real = (None,) if hasattr(agent, "real_targets") else (batch, next_states)  # (a revision before critic_real_length)
        agent.critic_step(*imagined, *real, 0.0)
        t4 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, (t3 - t2) - (t2 - t1), t4 - t3)):
            parts[key].append(value)
    return {k: 1000 * sorted(v)[len(v) // 2] for k, v in parts.items()}


def run_tree(tree: Path, threads: int, updates: int, overrides: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, __file__, "--measure", "--threads", str(threads), "--updates", str(updates),
                          "--overrides", json.dumps(overrides)],
                         env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=None, help="a git revision to measure beside this tree")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--also", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a row of this tree with these config overrides")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.threads, args.updates, json.loads(args.overrides))))
        return
    trees = {"this tree": (ROOT, [])} | {f"this tree, {also}": (ROOT, also.split()) for also in args.also}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            other = Path(tmp) / "other"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                           check=True, capture_output=True)
            trees[args.against] = (other, [])
        try:
            results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
            for _ in range(args.rounds):
                for name, (tree, overrides) in trees.items():
                    results[name].append(run_tree(tree, args.threads, args.updates, overrides))
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    keys = ("update", "world_model", "imagination", "actor", "critic")
    print(f"threads {args.threads}, {args.rounds} rounds of {args.updates} updates each (median of the rounds' medians)")
    print("| tree | full update ms | updates/s | WM ms | imag ms | actor ms | critic ms |")
    print("|---|---|---|---|---|---|---|")
    medians = {}
    for name, rounds in results.items():
        medians[name] = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in keys}
        m = medians[name]
        print(f"| {name} | {m['update']:.1f} | {1000 / m['update']:.1f} | {m['world_model']:.1f} | "
              f"{m['imagination']:.1f} | {m['actor']:.1f} | {m['critic']:.1f} |")
    if args.against:
        print(f"speed-up: {medians[args.against]['update'] / medians['this tree']['update']:.2f}x full updates/s")


if __name__ == "__main__":
    main()
