"""Each remedy switch of diagram 6 moves its quantity in the direction the diagnostics promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import collect_replay, real_batch, small_config
from reverie.trainer.agent import Agent, own_gradient_step
from reverie.trainer.config import UpdateCounts
from reverie.trainer.imagination import imagine


def test_adaptive_entropy_raises_the_weight_when_entropy_is_below_target():
    """Failure 5: with a target above the policy's entropy, the entropy weight (alpha) grows step by step."""
    batch, space = real_batch("CartPole-v1", batch_size=32)
    coefs = {}
    for target in (0.5, 0.0):
        agent = Agent(small_config(adaptive_entropy=True, target_entropy=target, entropy_coef=1e-3), space)
        with torch.no_grad():
            agent.policy.net[-1].bias.copy_(torch.tensor([3.0, -3.0]))  # a nearly decided policy: entropy ~0.1
            states = agent.world_model.encode(batch["obs"])
        steps = [agent.actor_step(states)[0] for _ in range(20)]
        assert steps[0]["entropy"] < 0.2
        coefs[target] = [m["entropy_coef"].item() for m in steps]
    assert coefs[0.5][-1] > 1.1 * coefs[0.5][0]  # below its target: the weight grows
    assert all(b >= a for a, b in zip(coefs[0.5], coefs[0.5][1:]))
    assert coefs[0.0][-1] < coefs[0.0][0]  # above its (zero) target the weight shrinks instead


def test_critic_target_clip_bounds_what_the_critic_learns():
    """Failure 4: with critic_target_clip=2, CartPole's returns (~10 from a start) are held at 2, and so is the critic
    (critic_lr 1e-3: 150 updates take a raw-return critic from 0 to ~7 unclipped, at the default 3e-4 only to ~1.5)."""
    replay, space = collect_replay("CartPole-v1", 500)
    rng = np.random.default_rng(0)
    values = {}
    for clip in (None, 2.0):
        torch.manual_seed(0)
        agent = Agent(small_config(critic_target_clip=clip, horizon=15, critic_lr=1e-3), space)
        agent.world_model.normalizer.update(torch.as_tensor(replay.observations()))
        for _ in range(150):
            agent.update(replay.sample(32, rng), UpdateCounts(world_model=1, actor=0, critic=1), 0.0)
        with torch.no_grad():
            values[clip] = agent.value(agent.world_model.encode(replay.sample(256, rng)["obs"])).mean().item()
    assert values[None] > 4.0
    assert values[2.0] < 2.3


def test_world_model_weight_decay_shrinks_the_world_models_weights():
    """Failure 2's regularisation: the same updates with decay leave smaller world-model weights."""
    replay, space = collect_replay("CartPole-v1", 300)
    norms = {}
    for decay in (0.0, 0.5):
        torch.manual_seed(0)
        agent = Agent(small_config(world_model_weight_decay=decay), space)
        rng = np.random.default_rng(0)
        for _ in range(50):
            agent.world_model_step(replay.sample(16, rng))
        norms[decay] = torch.cat([p.flatten() for p in agent.world_model.parameters()]).norm().item()
    assert norms[0.5] < 0.99 * norms[0.0]  # (1 - lr * decay) per step: about 2.5% over 50 steps


def test_actor_gradient_normalisation_applies_a_gradient_of_norm_clip_whatever_its_size():
    """Failure 3's gradient normalisation: a tiny and a huge loss make the same-sized step (plain SGD, lr 1)."""
    steps = []
    for scale in (1e-6, 1e6):
        weight = torch.nn.Parameter(torch.ones(3))
        sgd = torch.optim.SGD([weight], lr=1.0)
        own_gradient_step(scale * (torch.tensor([1.0, 2.0, 3.0]) * weight.pow(2)).sum(), [weight], sgd, clip=0.5, normalize=True)
        steps.append((weight.detach() - 1.0).norm().item())
    assert steps == [pytest.approx(0.5, rel=1e-4)] * 2
    weight = torch.nn.Parameter(torch.ones(3))
    own_gradient_step(1e-6 * weight.pow(2).sum(), [weight], torch.optim.SGD([weight], lr=1.0), clip=0.5)
    assert (weight.detach() - 1.0).norm().item() < 1e-5  # plain clipping leaves a small gradient small


def test_the_optimizer_gets_each_gradient_in_its_parameters_layout():
    """A convolution fed channels-last frames (the encoder's HWC images) gets its weight gradient back
    channels-last from autograd.grad; fused Adam on CUDA refuses strides that differ from the parameter's."""
    conv = torch.nn.Conv2d(3, 8, 3)
    frames = torch.rand(2, 9, 9, 3).permute(0, 3, 1, 2)  # HWC images as NCHW: channels-last strides
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.extend((p.grad.stride(), p.stride()) for p in conv.parameters())
            return super().step(closure)

    own_gradient_step(conv(frames).square().mean(), list(conv.parameters()), Recording(conv.parameters(), lr=0.1), clip=1.0)
    assert len(seen) == 2 and all(grad == param for grad, param in seen)


def test_world_model_layers_each_report_their_gradient_norm():
    """Failure 1's check, built in: a grad_norm/<layer> metric per world-model layer, and they add up."""
    batch, space = real_batch("CartPole-v1", batch_size=16)
    agent = Agent(small_config(), space)
    metrics = agent.world_model_step(batch)
    layers = {k: v.item() for k, v in metrics.items() if k.startswith("grad_norm/")}
    assert {"grad_norm/encoder.net.0.0", "grad_norm/dynamics.members.0.0", "grad_norm/continue_.net.4"} <= layers.keys()
    assert all(v > 0 for v in layers.values())
    total = np.sqrt(sum(v**2 for v in layers.values()))
    assert abs(total - metrics["world_model_grad_norm"].item()) < 1e-3 * total


def test_a_larger_ensemble_predicts_with_the_members_mean():
    """Failure 2's ensemble: members differ, and the imagined next state is their vote."""
    batch, space = real_batch("CartPole-v1", batch_size=8)
    agent = Agent(small_config(dynamics_ensemble=3), space)
    with torch.no_grad():
        states = agent.world_model.encode(batch["obs"])
        trajectory = imagine(agent.world_model, agent.policy, states, 1)
        members = agent.world_model.dynamics.member_means(states, trajectory.actions[:, 0])
    assert (members[0] - members[1]).abs().max() > 1e-3
    torch.testing.assert_close(trajectory.states[:, 1], members.mean(0))
