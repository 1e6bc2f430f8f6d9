"""No representation collapse: after world-model training, states still carry the observation.

The dynamics loss alone is minimised by mapping every observation to one state. The guards are
the stop-gradient on the dynamics target, layer-normalised states and the decoder; this test
trains the real world model on real CartPole data and checks on held-out episodes that states
stay spread out, linearly decodable and reconstructable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import collect_replay, small_config
from reverie.trainer.agent import Agent
from reverie.trainer.replay import Replay

UPDATES = 400


def split_by_episode(full: Replay) -> tuple[Replay, torch.Tensor]:
    """Every fifth episode is held out (its observations returned); the rest form the training replay."""
    d = full.steps()
    held = d["episode"] % 5 == 0
    train = Replay(2 * len(full), full.obs_shape, full.action_shape)
    for i in np.flatnonzero(~held):
        truncated = bool(d["episode_end"][i]) and not bool(d["terminated"][i])
        train.add(d["obs"][i], d["action"][i], d["reward"][i], d["next_obs"][i], bool(d["terminated"][i]), truncated)
    return train, torch.as_tensor(d["obs"][held])


def r_squared(states_fit, obs_fit, states_eval, obs_eval) -> torch.Tensor:
    """Per-dimension R^2 on the eval set of a least-squares linear probe (with bias) fit on the fit set."""
    design = lambda s: torch.cat([s, torch.ones(len(s), 1)], 1).double()  # noqa: E731
    weights = torch.linalg.lstsq(design(states_fit), obs_fit.double()).solution
    residual = obs_eval.double() - design(states_eval) @ weights
    return 1.0 - residual.pow(2).mean(0) / obs_eval.double().var(0)


@pytest.fixture(scope="module")
def trained():
    """(agent, train obs, held-out obs, decoder error before training) after UPDATES world-model steps."""
    torch.manual_seed(0)
    full, space = collect_replay("CartPole-v1", 2500, seed=0)
    train, held_out = split_by_episode(full)
    train_obs = torch.as_tensor(train.observations())
    agent = Agent(small_config(batch_size=64), space)
    agent.world_model.normalizer.update(train_obs)
    with torch.no_grad():
        before = reconstruction_error(agent, held_out)
    rng = np.random.default_rng(0)
    for _ in range(UPDATES):
        metrics = agent.world_model_step(train.sample(64, rng))
    assert np.isfinite(float(metrics["world_model_loss"]))
    return agent, train_obs, held_out, before


def reconstruction_error(agent: Agent, obs: torch.Tensor) -> torch.Tensor:
    """Per-dimension MSE of decode(encode(obs)) in raw observation units, relative to the obs variance."""
    recon = agent.world_model.decode(agent.world_model.encode(obs))
    return (recon - obs).pow(2).mean(0) / obs.var(0)


@torch.no_grad()
def test_states_vary_across_observations(trained):
    """Every state dimension still varies across held-out observations, and states are far apart on average."""
    agent, _, held_out, _ = trained
    states = agent.world_model.encode(held_out)
    assert states.std(0).min() > 0.1
    distances = torch.cdist(states, states)
    off_diagonal = distances[~torch.eye(len(states), dtype=torch.bool)]
    # Layer-normed states have norm sqrt(state_dim) = 4; a collapsed encoder would put them all together.
    assert off_diagonal.mean() > 1.0
    distinct = torch.cdist(held_out, held_out)[~torch.eye(len(states), dtype=torch.bool)] > 1e-3
    assert (off_diagonal[distinct] > 1e-4).float().mean() > 0.999


@torch.no_grad()
def test_linear_probe_recovers_the_observation(trained):
    """A linear map fit on training states predicts every raw held-out observation dimension with R^2 > 0.9."""
    agent, train_obs, held_out, _ = trained
    r2 = r_squared(agent.world_model.encode(train_obs), train_obs, agent.world_model.encode(held_out), held_out)
    assert r2.min() > 0.9, r2


@torch.no_grad()
def test_decoder_reconstructs_held_out_observations(trained):
    """Reconstruction error is a small fraction of the observation variance, and training is what made it so."""
    agent, _, held_out, before = trained
    after = reconstruction_error(agent, held_out)
    assert after.mean() < 0.1, after
    assert after.max() < 0.3, after
    assert after.mean() < 0.2 * before.mean()
