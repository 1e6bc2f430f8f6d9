"""Imagination fidelity: open-loop imagination against held-out real episodes (`trainer/fidelity.py`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import collect_replay, small_config
from reverie.evaluation import play_episodes
from reverie.trainer.envs import make_env, space_info
from reverie.trainer.fidelity import CONTEXT, episodes_replay, imagination_fidelity
from reverie.trainer.losses import world_model_loss
from reverie.trainer.world_model import WorldModel

WEIGHTS = {"dynamics": 1.0, "reward": 1.0, "continue": 1.0, "decoder": 1.0}


def random_episodes(env_id: str, n: int, seed: int = 0):
    """`n` episodes of random play, the same ones on every run (the action space's sampler seeded)."""
    env = make_env(env_id)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    return play_episodes(lambda obs: env.action_space.sample(), env_id, n, seed, env), space_info(env), rng


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_the_episodes_become_the_replay_they_were(env_id):
    """Every step of every episode, in order, with agent actions (Pendulum's torque back in [-1, 1])
    and the ending kind: terminated (the pole fell) or truncated (Pendulum's time limit)."""
    episodes, space, _ = random_episodes(env_id, 3)
    replay = episodes_replay(episodes, space)
    assert len(replay) == sum(len(e.rewards) for e in episodes)
    steps = replay.steps()
    ends = np.flatnonzero(steps["episode_end"])
    assert (ends + 1).tolist() == np.cumsum([len(e.rewards) for e in episodes]).tolist()
    first = episodes[0]
    np.testing.assert_array_equal(steps["obs"][: len(first.rewards)], first.observations[:-1])
    np.testing.assert_array_equal(steps["next_obs"][: len(first.rewards)], first.observations[1:])
    np.testing.assert_allclose(space.coding.to_env(steps["action"][: len(first.rewards)]).reshape(first.actions.shape),
                               first.actions, atol=1e-5)
    assert steps["terminated"][ends].tolist() == [float(e.terminated) for e in episodes]
    assert all(e.terminated for e in episodes) == (env_id == "CartPole-v1")


def test_a_trained_world_model_imagines_closer_to_what_happened():
    """Trained on random CartPole play, the world model's imagined observations stay nearer to held-out
    episodes than an untrained one's, at every imagined step, and it knows when a pole falls."""
    episodes, space, rng = random_episodes("CartPole-v1", 20, seed=5)
    train = collect_replay("CartPole-v1", 2000, seed=2)[0]
    untrained = WorldModel(small_config(), space)
    torch.manual_seed(0)
    trained = WorldModel(small_config(), space)
    for wm in (untrained, trained):
        wm.normalizer.update(torch.as_tensor(train.observations()))
    optimizer = torch.optim.Adam(trained.parameters(), lr=3e-3)
    for _ in range(400):
        loss = world_model_loss(trained, train.sample(64, rng), WEIGHTS, True).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    before = imagination_fidelity(untrained, space, episodes, 5, np.random.default_rng(0))
    after = imagination_fidelity(trained, space, episodes, 5, np.random.default_rng(0))
    assert len(after["obs_error"]) == 5 and all(0.0 <= a <= 1.0 for a in after["continue_accuracy"])
    assert all(a < 0.5 * b for a, b in zip(after["obs_error"], before["obs_error"])), (before, after)
    assert all(a < b for a, b in zip(after["reward_error"], before["reward_error"]))
    assert after["obs_error"][0] < after["obs_error"][-1]  # open loop: the error grows with the steps imagined


def test_the_lists_stop_where_no_episode_reaches():
    """Random CartPole episodes last ~10-40 steps: a 64-step horizon runs out of real steps to compare with."""
    episodes, space, _ = random_episodes("CartPole-v1", 5, seed=1)
    longest = max(len(e.rewards) for e in episodes)
    fidelity = imagination_fidelity(WorldModel(small_config(), space), space, episodes, 64, np.random.default_rng(0))
    assert 0 < len(fidelity["obs_error"]) <= longest - CONTEXT < 64
    assert all(np.isfinite(v) for values in fidelity.values() for v in values)
