"""The networks of diagram 1 and the env adapter: shapes, action ranges and the spaces the trainer accepts."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from builders import real_batch, small_config
from reverie.trainer.agent import Agent
from reverie.trainer.components import (
    ActionDistribution,
    CNNEncoder,
    DynamicsModel,
    ObservationNormalizer,
    PolicyHead,
    symexp,
    symlog,
)
from reverie.trainer.envs import SpaceInfo, make_env, space_info
from reverie.trainer.imagination import imagine

IMAGE = SpaceInfo(obs_shape=(84, 84, 3), discrete=True, action_dim=3)


def image_config():
    return small_config(cnn_depth=4)


def test_cnn_encoder_takes_channels_last_images():
    cfg = image_config()
    encoder = CNNEncoder((84, 84, 3), cfg.sizes)
    features = encoder(torch.rand(2, 84, 84, 3))
    assert features.shape == (2, cfg.feature_dim)


def test_image_agent_encodes_decodes_and_acts():
    """uint8 frames in, states of state_dim, reconstructions back in [0, 255] at 84x84x3, a valid action out."""
    cfg = image_config()
    agent = Agent(cfg, IMAGE)
    frames = torch.randint(0, 256, (3, 84, 84, 3), dtype=torch.uint8)
    with torch.no_grad():
        states = agent.world_model.encode(frames)
        recon = agent.world_model.decode(states)
    assert states.shape == (3, cfg.state_dim)
    assert recon.shape == (3, 84, 84, 3)
    assert recon.min() >= 0.0 and recon.max() <= 255.0
    action = agent.act(frames[0].numpy(), deterministic=False)
    assert action.shape == () and 0 <= int(action) < 3


def test_image_world_model_step_runs():
    """The image path trains too: the decoder target is the [-0.5, 0.5]-scaled frame, losses are finite."""
    agent = Agent(image_config(), IMAGE)
    frames = torch.randint(0, 256, (4, 84, 84, 3), dtype=torch.uint8).float()
    batch = {"obs": frames, "next_obs": frames.flip(0), "action": torch.tensor([0.0, 1.0, 2.0, 1.0]),
             "reward": torch.ones(4), "terminated": torch.tensor([0.0, 0.0, 1.0, 0.0])}
    metrics = agent.world_model_step(batch)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert metrics["world_model_grad_norm"] > 0


def test_continuous_policy_actions_stay_in_unit_box():
    """Sampled, deterministic and reparameterised actions are all within [-1, 1], even for extreme states."""
    space = SpaceInfo(obs_shape=(3,), discrete=False, action_dim=2, action_low=np.array([-2.0, -2.0], np.float32),
                      action_high=np.array([2.0, 2.0], np.float32))
    cfg = small_config()
    policy = PolicyHead(cfg.sizes, space)
    states = torch.randn(256, cfg.state_dim) * 100.0
    dist = policy(states)
    action, entropy = dist.rsample()
    for a in (dist.sample(), dist.mode(), action):
        assert a.shape == (256, 2)
        assert a.abs().max() <= 1.0
    assert torch.isfinite(entropy).all()
    assert action.requires_grad


def test_discrete_rsample_is_a_one_hot_with_gradient():
    """The straight-through action is exactly one-hot in value but differentiable w.r.t. the logits."""
    cfg = small_config()
    policy = PolicyHead(cfg.sizes, SpaceInfo((4,), True, 3))
    dist = policy(torch.randn(64, cfg.state_dim))
    onehot, _ = dist.rsample()
    # Equal to the one-hot up to float rounding of (onehot + p) - p.
    torch.testing.assert_close(onehot.detach(), onehot.detach().round(), atol=1e-6, rtol=0)
    torch.testing.assert_close(onehot.detach().sum(-1), torch.ones(64))
    (grad,) = torch.autograd.grad((onehot * torch.arange(3.0)).sum(), policy.net[-1].weight)
    assert grad.abs().sum() > 0
    assert dist.sample().max() < 3 and dist.sample().min() >= 0


def test_to_env_action_maps_unit_box_to_pendulum_bounds():
    env = make_env("Pendulum-v1")
    space = space_info(env)
    assert not space.discrete and space.action_dim == 1
    for unit, expected in ((-1.0, -2.0), (0.0, 0.0), (1.0, 2.0), (0.5, 1.0), (1.7, 2.0), (-3.0, -2.0)):
        out = space.to_env_action(np.array([unit], np.float32))
        assert out.dtype == np.float32
        assert out == pytest.approx([expected])
        assert env.action_space.contains(out)


def test_to_env_action_discrete_is_a_python_int():
    space = space_info(make_env("CartPole-v1"))
    assert space.discrete and space.action_dim == 2 and space.obs_shape == (4,)
    action = space.to_env_action(np.asarray(1))
    assert action == 1 and isinstance(action, int)


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "Blackjack-v1"])
def test_make_env_rejects_non_box_observations(env_id):
    """Discrete (FrozenLake) and Tuple (Blackjack) observation spaces cannot feed the encoders."""
    with pytest.raises(ValueError, match="observation space must be a Box"):
        make_env(env_id)


def test_space_info_rejects_unbounded_box_actions():
    env = make_env("Pendulum-v1")
    env.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    with pytest.raises(ValueError, match="finite bounds"):
        space_info(env)


def test_symlog_symexp_are_inverse_and_compress():
    x = torch.tensor([-1000.0, -3.0, -0.5, 0.0, 0.5, 3.0, 1000.0])
    torch.testing.assert_close(symexp(symlog(x)), x)
    assert symlog(x).abs().max() < 7.0
    assert torch.equal(torch.sign(symlog(x)), torch.sign(x))


def test_observation_normalizer_tracks_running_statistics():
    """Batched running mean/variance equal the whole-data statistics; normalise -> denormalise is the identity."""
    data = torch.randn(300, 3) * torch.tensor([0.1, 5.0, 1.0]) + torch.tensor([2.0, -1.0, 0.0])
    norm = ObservationNormalizer((3,), enabled=True)
    for chunk in data.split(70):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False), atol=1e-3, rtol=1e-3)
    normalised = norm(data)
    assert normalised.mean(0).abs().max() < 1e-3 and (normalised.std(0) - 1).abs().max() < 0.01
    torch.testing.assert_close(norm.denormalize(normalised), data, atol=1e-4, rtol=1e-4)
    off = ObservationNormalizer((3,), enabled=False)
    off.update(data)
    assert torch.equal(off(data), data)


def test_dynamics_ensemble_votes_by_mean():
    """With K members the predicted next state is the mean of the member predictions, each layer-normalised."""
    cfg = small_config(dynamics_ensemble=3)
    dynamics = DynamicsModel(cfg.sizes, 2, cfg.dynamics, cfg.dynamics_ensemble, cfg.dynamics_std)
    state, action = torch.randn(5, cfg.state_dim), torch.randn(5, 2)
    members = dynamics.member_means(state, action)
    assert members.shape == (3, 5, cfg.state_dim)
    torch.testing.assert_close(members.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(dynamics(state, action).mean, members.mean(0))


def test_world_model_step_predicts_next_state_reward_continue():
    """The exported one-step function returns (next state, reward in env units, continue probability)."""
    batch, space = real_batch("CartPole-v1", batch_size=8)
    agent = Agent(small_config(), space)
    states = agent.world_model.encode(batch["obs"])
    next_state, reward, cont, disagreement = agent.world_model.step(states, batch["action"])
    assert next_state.shape == states.shape and reward.shape == cont.shape == disagreement.shape == (8,)
    assert (disagreement == 0).all()  # one member: nothing to disagree with
    assert ((cont >= 0) & (cont <= 1)).all()


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v9", "CartPole-v99"])
def test_unknown_env_id_is_a_value_error_naming_it(env_id):
    """`reverie train --env` with a bad id must exit with a message (ValueError -> exit 2), not a traceback."""
    with pytest.raises(ValueError, match=env_id):
        make_env(env_id)


def test_discrete_samples_follow_the_policy_probabilities():
    """The inverse-CDF sampler draws each class as often as its probability says (10k draws per row)."""
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]])
    dist = ActionDistribution(True, (probs.log().repeat_interleave(10_000, 0),))
    index = dist.sample().view(2, 10_000)
    for row in range(2):
        freq = torch.bincount(index[row], minlength=3).float() / 10_000
        torch.testing.assert_close(freq, probs[row], atol=0.015, rtol=0)
    onehot, entropy = dist.rsample()
    torch.testing.assert_close(entropy[:1], torch.distributions.Categorical(probs=probs[:1]).entropy())


def test_continuous_entropy_estimate_is_the_tanh_normal_log_density():
    """-log p(a) of the squashed sample equals the Normal log density minus the tanh Jacobian, term by term."""
    torch.manual_seed(3)
    mean, std = torch.randn(64, 2), torch.rand(64, 2) + 0.1
    dist = ActionDistribution(False, (mean, std))
    action, entropy = dist.rsample()
    raw = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    expected = -(torch.distributions.Normal(mean, std).log_prob(raw) - torch.log1p(-action.pow(2) + 1e-6)).sum(-1)
    keep = action.abs().max(-1).values < 0.999  # atanh loses precision at the edges
    torch.testing.assert_close(entropy[keep], expected[keep], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("fields", [{}, {"dynamics": "transformer", "sequence_mode": True, "sequence_length": 4}],
                         ids=["mlp", "transformer-memory"])
def test_imagination_matches_the_exported_step_one_transition_at_a_time(fields):
    """Batching reward and continue after the rollout gives the numbers WorldModel.step gives step by step;
    a transformer's rollout attends over its earlier steps exactly as the exported step reads them from
    padded `past` inputs (here 6 steps through a window of 3: it slides)."""
    batch, space = real_batch("CartPole-v1", batch_size=8)
    torch.manual_seed(0)
    agent = Agent(small_config(**fields), space)
    wm = agent.world_model
    with torch.no_grad():
        for member in wm.dynamics.members:
            if hasattr(member, "position"):
                member.position.normal_(0.0, 0.5)
        start = wm.belief(wm.encode(batch["obs"]))
        trajectory = imagine(wm, agent.policy, start, 6)
    state, window = start, wm.dynamics_context
    actions = trajectory.actions.argmax(-1)  # agent actions: the class indices
    for t in range(6):
        past = ()
        if window:
            n, pad = min(t, window), window - min(t, window)
            past = (torch.cat([trajectory.states[:, t - n:t], torch.zeros(8, pad, start.shape[-1])], 1),
                    torch.cat([actions[:, t - n:t], torch.zeros(8, pad, dtype=torch.long)], 1),
                    (torch.arange(window) < n).expand(8, window))
        next_state, reward, cont, _ = wm.step(state, actions[:, t], *past)
        torch.testing.assert_close(next_state, trajectory.states[:, t + 1])
        torch.testing.assert_close(reward, trajectory.rewards[:, t])
        torch.testing.assert_close(cont, trajectory.continues[:, t])
        state = next_state


def test_asking_for_cuda_without_one_is_a_clear_error():
    from reverie.trainer.parts import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
