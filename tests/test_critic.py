"""The critic tells the truth: its values stay inside what the rewards allow and near the returns observed.

Failure 4 of the seed, as users met it: CartPole runs served values in the millions where no
discounted return can exceed 1/(1 - 0.99) = 100. The cause, measured: bootstrap values at imagined
states far from any data (the horizon's last state is never a training input), regressed in symlog
space, where a linear extrapolation is an exponential one, fed back through the next targets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import collect_replay
from reverie.trainer.agent import Agent
from reverie.trainer.config import UpdateCounts, build_config
from reverie.trainer.imagination import imagine
from reverie.trainer.losses import lambda_return


@pytest.mark.slow
def test_driven_critic_stays_inside_the_reward_bounds():
    """Actor and critic driven on one fixed batch of CartPole data, with fast learning rates and no target
    critic, until without the bounds the critic runs away: measured with return_bounds=false, values at real
    states reach 456 and served lambda-returns 34,020 after 400 updates, infinity by 600. With the bounds,
    values at real states and the lambda-returns the service computes stay within r_max / (1 - gamma) = 100."""
    torch.manual_seed(0)
    replay, space = collect_replay("CartPole-v1", 2000, seed=0)
    cfg = build_config(None, ["batch_size=64", "critic_lr=0.002", "actor_lr=0.002", "target_critic=false",
                              "symlog=true"], threads=1)  # the runaway was measured regressing in symlog space
    agent = Agent(cfg, space)
    agent.world_model.normalizer.update(torch.as_tensor(replay.observations()))
    rng = np.random.default_rng(0)
    for _ in range(300):
        agent.update(replay.sample(64, rng), UpdateCounts(world_model=1, actor=0, critic=0), 1.0)
    batch = replay.sample(64, rng)
    for _ in range(600):
        agent.update(batch, UpdateCounts(world_model=0, actor=1, critic=1), 0.0)
    bound = 1.0 / (1 - cfg.gamma)
    with torch.no_grad():
        real = agent.value(agent.world_model.encode(replay.sample(512, rng)["obs"]))
        trajectory = imagine(agent.world_model, agent.policy, agent.world_model.encode(batch["obs"]), cfg.horizon)
        served = lambda_return(trajectory.rewards, trajectory.continues, agent.value(trajectory.states),
                               cfg.gamma, cfg.lambda_)
    assert torch.isfinite(real).all() and torch.isfinite(served).all()
    assert real.min() >= 0.0 and real.max() <= bound
    # Predicted rewards are CartPole's 1 within the reward head's error of a few %: so are the returns' bounds.
    assert -0.02 * bound <= served.min() and served.max() <= 1.02 * bound


def test_values_carry_the_bounds_into_every_served_graph():
    """The bounds live in the value head, so /value, /act's value and /imagine's lambda-returns (all from the
    exported value graph) answer inside them; before any reward is seen there is no bound."""
    replay, space = collect_replay("CartPole-v1", 200, seed=1)
    agent = Agent(build_config("smoke", threads=1), space)
    states = torch.randn(32, agent.cfg.state_dim) * 50
    with torch.no_grad():
        agent.value.net[-1].bias.fill_(5000.0)  # a raw value far outside any CartPole return
        assert agent.value(states).max() > 1000
    agent.update(replay.sample(16, np.random.default_rng(0)), UpdateCounts(world_model=1, actor=0, critic=0), 1.0)
    assert agent.return_bounds() == (0.0, pytest.approx(100.0))
    with torch.no_grad():
        assert agent.value(states).max() <= 100.0 and agent.target_value(states).max() <= 100.0
    off = Agent(build_config("smoke", ["return_bounds=false"], threads=1), space)
    off.update(replay.sample(16, np.random.default_rng(0)), UpdateCounts(world_model=1, actor=0, critic=0), 1.0)
    assert off.return_bounds() == (-np.inf, np.inf)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first test of the session's solved-CartPole run pays for its training (~100 s alone)
def test_the_critic_of_a_solved_cartpole_learns_the_returns_observed(trained_cartpole):
    """The moment CartPole is first solved the critic still lags the new policy (the benchmark: 0.35-0.45x of
    the observed return at 1,500 steps, 0.64-1.28x from 2,000 on). Hold that policy fixed, let it play 2,000
    steps into the run's replay, and train world model and critic on it: after 400 updates the critic's
    value at 20 start states is within 2x of the discounted return that followed them under that policy
    (sampling, as in training: the critic values the policy it imagines with). Measured here: 0.74x at
    400 updates, 0.75x at 600, 0.82x at 800."""
    from reverie.evaluation import play_episodes
    from reverie.runs import RunDir
    from reverie.trainer.checkpoint import load_checkpoint
    from reverie.trainer.config import Config
    from reverie.trainer.envs import make_env
    from reverie.trainer.replay import Replay

    cfg = Config.model_validate(RunDir(trained_cartpole).config())
    state = load_checkpoint(RunDir(trained_cartpole).latest_checkpoint())
    env = make_env(cfg.env_id)
    space = collect_replay(cfg.env_id, 1)[1]
    agent = Agent(cfg, space)
    agent.load_state_dict(state["agent"])
    replay = Replay(cfg.replay_capacity, space.obs_shape, ())
    replay.load_state_dict(state["replay"])
    obs, _ = env.reset(seed=123)
    for _ in range(2000):
        action = agent.act(obs, deterministic=False)
        next_obs, reward, terminated, truncated, _ = env.step(space.to_env_action(action))
        replay.add(obs, action, reward, next_obs, terminated, truncated)
        obs = env.reset()[0] if terminated or truncated else next_obs
    act = lambda obs: space.to_env_action(agent.act(obs, deterministic=False))  # noqa: E731
    episodes = play_episodes(act, cfg.env_id, 20, cfg.seed, gamma=cfg.gamma)
    observed = float(np.mean([e.discounted for e in episodes]))
    first = torch.as_tensor(np.stack([e.observations[0] for e in episodes]))
    rng = np.random.default_rng(0)
    for _ in range(400):
        agent.update(replay.sample(cfg.batch_size, rng), UpdateCounts(world_model=1, actor=0, critic=1), 0.0)
    with torch.no_grad():
        value = agent.value(agent.world_model.encode(first)).mean().item()
    assert observed > 50  # the policy keeps the pole up for most of an episode
    assert 0.5 * observed <= value <= min(2.0 * observed, 100.0)


def test_checkpoints_from_before_the_bounds_still_load():
    """A run checkpointed by an earlier version resumes: the bounds start unknown and refill from the next batch."""
    replay, space = collect_replay("CartPole-v1", 200, seed=2)
    old = Agent(build_config("smoke", threads=1), space).state_dict()
    for key in ("reward_range", "value.bounds", "target_value.bounds"):
        del old[key]
    agent = Agent(build_config("smoke", threads=1), space)
    agent.load_state_dict(old)
    assert agent.return_bounds() == (-np.inf, np.inf)
    agent.update(replay.sample(16, np.random.default_rng(0)), UpdateCounts(world_model=1, actor=0, critic=0), 1.0)
    assert agent.return_bounds() == (0.0, pytest.approx(100.0))
