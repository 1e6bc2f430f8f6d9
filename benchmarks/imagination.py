"""How well each world model imagines: open-loop error on held-out episodes, and the ensemble's doubt.

    python benchmarks/imagination.py                      # 3,000 world-model updates per model
    python benchmarks/imagination.py --updates 500        # a quick look

For full CartPole-v1 and CartPole without velocities (`obs_indices=[0,2]`), every world model
(flat MLP or transformer; sequence mode with memory and MLP or transformer dynamics) trains
on the same random-play replay, in the same number of updates, then imagines 15 steps open loop
with the real actions from real steps of held-out random-play episodes (`trainer/fidelity.py`).
Printed: the decoded observation's mean absolute error (env units) at imagined steps 1, 5 and 15
and over all 15, the continue accuracy, and the world-model update time. Then a 5-member ensemble's
disagreement on held-out states near the data against states far beyond it (6x the pole angles,
4x the velocities). Only world models train here: no actor, no critic.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from reverie.envs import EnvSpec
from reverie.evaluation import play_episodes
from reverie.trainer.agent import Agent
from reverie.trainer.config import build_config
from reverie.trainer.envs import make_env, space_info
from reverie.trainer.fidelity import imagination_fidelity
from reverie.trainer.losses import world_model_loss
from reverie.trainer.replay import Replay
from reverie.trainer.world_model import WorldModel

ENVS = {"CartPole-v1": None, "CartPole-v1 obs_indices=[0,2]": [0, 2]}
MODELS = {"mlp, flat": [], "transformer, flat": ["dynamics=transformer"], "mlp + memory": ["sequence_mode=true"],
          "transformer + memory": ["sequence_mode=true", "dynamics=transformer"]}
HORIZON = 15


def random_replay(obs_indices, steps: int, seed: int) -> tuple[Replay, object]:
    env = make_env(EnvSpec("CartPole-v1", obs_indices), seed)
    space = space_info(env)
    replay = Replay(steps, space.obs_shape, ())
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, np.asarray(action), reward, next_obs, terminated, truncated)
        obs = next_obs if not (terminated or truncated) else env.reset()[0]
    return replay, space


def train(cfg, space, replay: Replay, updates: int, rng: np.random.Generator, label: str) -> tuple[WorldModel, float]:
    """A world model after `updates` of the agent's own world-model steps on the replay (sequences in
    sequence mode), and milliseconds per update."""
    agent = Agent(cfg, space)
    agent.world_model.normalizer.update(torch.as_tensor(replay.observations()))
    start = time.perf_counter()
    for _ in tqdm(range(updates), desc=label, leave=False, mininterval=1.0):
        agent.world_model_step(replay.sample_sequences(cfg.sequences_per_batch, cfg.sequence_length, rng)
                               if cfg.sequence_mode else replay.sample(cfg.batch_size, rng))
    return agent.world_model, 1000 * (time.perf_counter() - start) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=20_000, help="random-play env steps in the training replay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=list(ENVS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--no-ensemble", action="store_true", help="skip the ensemble's near/far disagreement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| env | world model | obs error @1 | @5 | @15 | mean of 15 | continue acc. | WM update ms |")
    print("|---|---|---|---|---|---|---|---|")
    for env_name in args.envs:
        obs_indices = ENVS[env_name]
        replay, space = random_replay(obs_indices, args.steps, args.seed)
        env = make_env(EnvSpec("CartPole-v1", obs_indices))
        env.action_space.seed(args.seed + 1)  # the same held-out episodes on every run
        held_out = play_episodes(lambda obs: env.action_space.sample(), "CartPole-v1", 200, args.seed + 1, env)
        for label in args.models:
            overrides = MODELS[label]
            torch.manual_seed(args.seed)
            cfg = build_config(None, overrides)
            wm, ms = train(cfg, space, replay, args.updates, np.random.default_rng(args.seed), f"{env_name}: {label}")
            f = imagination_fidelity(wm, space, held_out, HORIZON, np.random.default_rng(0), sequences=512)
            errors = f["obs_error"]
            pick = lambda k: f"{errors[k - 1]:.4f}" if len(errors) >= k else "–"  # noqa: E731
            print(f"| {env_name} | {label} | {pick(1)} | {pick(5)} | {pick(15)} | {np.mean(errors):.4f} "
                  f"| {np.mean(f['continue_accuracy']):.3f} | {ms:.1f} |", flush=True)

    if args.no_ensemble:
        return
    replay, space = random_replay(None, args.steps, args.seed)
    cfg = build_config(None, ["dynamics_ensemble=5"])
    torch.manual_seed(args.seed)
    wm, _ = train(cfg, space, replay, args.updates, np.random.default_rng(args.seed), "ensemble of 5")
    held_out = random_replay(None, 2000, args.seed + 1)[0].sample(1024, np.random.default_rng(1))
    far = {**held_out, "obs": held_out["obs"] * torch.tensor([1.0, 4.0, 6.0, 4.0])}
    weights = dict.fromkeys(("dynamics", "reward", "continue", "decoder"), 1.0)
    with torch.no_grad():
        near_d, far_d = (world_model_loss(wm, b, weights, cfg.symlog).metrics["dynamics_disagreement"].item()
                         for b in (held_out, far))
    print(f"\nensemble of 5 (full CartPole): disagreement {near_d:.4f} on held-out states near the data, "
          f"{far_d:.4f} far beyond it (6x angles, 4x velocities): {far_d / near_d:.1f}x")


if __name__ == "__main__":
    main()
