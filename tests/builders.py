"""Builders the learning-core tests share: tiny configs, real-env transitions, a short frame run.

Everything here runs on real gymnasium envs (CartPole-v1, Pendulum-v1) and the real trainer
classes; nothing is mocked. Sizes are the "smoke" preset's so the suite stays cheap. Tests import
these by name (`from builders import small_config`); the fixtures stay in conftest.py.
"""

from __future__ import annotations

import numpy as np
import torch

from reverie.envs import EnvSpec
from reverie.trainer.agent import Agent
from reverie.trainer.config import Config, build_config
from reverie.trainer.envs import SpaceInfo, make_env, space_info
from reverie.trainer.feed import ClientFeed
from reverie.trainer.replay import Replay


def small_config(**fields) -> Config:
    """The smoke preset (tiny networks) on one thread, with `fields` on top."""
    return build_config("smoke", threads=1, **fields)


def random_action(space: SpaceInfo, rng: np.random.Generator) -> np.ndarray:
    """A random action in the agent's encoding: class index, or a vector in [-1, 1]."""
    if space.discrete:
        return np.asarray(rng.integers(space.action_dim))
    return rng.uniform(-1.0, 1.0, space.action_dim).astype(np.float32)


def collect_replay(env_id: str, steps: int, seed: int = 0, obs_indices: list[int] | None = None) -> tuple[Replay, SpaceInfo]:
    """`steps` real env transitions under random actions (observing `obs_indices` only, when given),
    stored the way the trainer stores them."""
    env = make_env(EnvSpec(env_id, obs_indices))
    space = space_info(env)
    rng = np.random.default_rng(seed)
    replay = Replay(2 * steps, space.obs_shape, () if space.discrete else (space.action_dim,))  # room for every episode's last obs
    obs, _ = env.reset(seed=seed)
    episode = 0
    for _ in range(steps):
        action = random_action(space, rng)
        next_obs, reward, terminated, truncated, _ = env.step(space.to_env_action(action))
        replay.add(obs, action, reward, next_obs, terminated, truncated)
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed * 1000 + episode)
    env.close()
    return replay, space


def real_batch(env_id: str, batch_size: int = 16, steps: int = 200, seed: int = 0):
    """A replay-style batch (float tensors obs, action, reward, next_obs, terminated) and the env's SpaceInfo."""
    replay, space = collect_replay(env_id, steps, seed)
    return replay.sample(batch_size, np.random.default_rng(seed)), space


def pixel_run(run_dir, size: int):
    """A trainer that saw frames of `size` for 40 CartPole steps (sequence mode, history_length 3), its
    bundle published once at the end."""
    from reverie.trainer.loop import Trainer

    cfg = small_config(pixels=True, image_size=size, cnn_depth=8, sequence_length=4, total_steps=40, learning_starts=16,
                       warmup_steps=20, transition_steps=10, eval_every=40, eval_episodes=1, log_every=20)
    trainer = Trainer(cfg, run_dir)
    trainer.run()
    return trainer


# Replays whose every step is recognisable: obs(k) is step k's observation.
def obs(i: float) -> np.ndarray:
    """A recognisable observation for step i."""
    return np.array([i, i + 0.5, -i, 2 * i], dtype=np.float32)


def fill(replay: Replay, steps: list[tuple[bool, bool]], start: int = 0) -> None:
    """Add one step per (terminated, truncated) pair, with obs/reward/action identifying the step."""
    for k, (terminated, truncated) in enumerate(steps, start):
        replay.add(obs(k), np.asarray(k % 2), float(k), obs(k + 1), terminated, truncated)


def ending_every(period: int, steps: int, capacity: int | None = None) -> Replay:
    """A replay whose episodes terminate every `period` steps (the last step of each is the terminal one)."""
    replay = Replay(capacity or 2 * steps, (4,), ())
    fill(replay, [((k + 1) % period == 0, False) for k in range(steps)])
    return replay


# What an update changed: an agent's parameters and buffers by group (its top-level module).
GROUPS = ("world_model", "policy", "value", "target_value", "log_alpha", "return_scale", "reward_range")


def group_of(name: str) -> str:
    return name.split(".", 1)[0]


def state_tensors(agent: Agent):
    """Parameters and buffers alike: normaliser statistics, return scale and bounds are state too."""
    yield from agent.named_parameters()
    yield from agent.named_buffers()


def snapshot(agent: Agent) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in state_tensors(agent)}


def changed_groups(agent: Agent, before: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """For each group, the names of the parameters and buffers that are no longer bit-identical."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for name, t in state_tensors(agent):
        if not torch.equal(t.detach(), before[name]):
            out[group_of(name)].append(name)
    return out


def group_names(agent: Agent, group: str) -> list[str]:
    return [n for n, _ in agent.named_parameters() if group_of(n) == group]


# Clients' experience, as the trainer's feed hands it over.
CARTPOLE = SpaceInfo((4,), True, 2)


def drain(feed: ClientFeed, version: int = 1) -> list:
    feed.poll(version)
    out = []
    while (step := feed.take()) is not None:
        out.append(step)
    return out
