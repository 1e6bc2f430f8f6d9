"""The isolation proof (diagram 3): each optimizer step changes its own parameters and nothing else.

The actor's loss is computed *through* the world model and the critic, so a careless update
(loss.backward() + one optimizer, or a shared parameter list) would silently move them too.
These tests run the real Agent on batches of real CartPole (discrete) and Pendulum (continuous)
transitions and compare every parameter bit for bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

import numpy as np

from builders import changed_groups, collect_replay, group_names, real_batch, small_config, snapshot
from reverie.trainer.agent import Agent
from reverie.trainer.components import symlog
from reverie.trainer.config import UpdateCounts
from reverie.trainer.imagination import imagine
from reverie.trainer.losses import actor_loss, replay_lambda_return

ENVS = ["CartPole-v1", "Pendulum-v1"]
def make_setup(env_id: str, **fields):
    """(agent, batch, start states, next states) for one env; the agent's normaliser has seen the batch, as in training."""
    batch, space = real_batch(env_id, batch_size=16)
    agent = Agent(small_config(env_id=env_id, **fields), space)
    agent.world_model.normalizer.update(batch["obs"])
    with torch.no_grad():
        states, next_states = agent.world_model.encode(torch.cat([batch["obs"], batch["next_obs"]])).chunk(2)
    return agent, batch, states, next_states


@pytest.fixture(params=ENVS)
def setup(request):
    return make_setup(request.param)


def value_space(agent: Agent):
    """What the critic regresses in: symlog of the returns, or the returns themselves."""
    return symlog if agent.cfg.symlog else (lambda x: x)


def test_parameter_groups_partition_the_agent(setup):
    """Every trainable parameter belongs to exactly one optimizer; the target critic to none."""
    agent = setup[0]
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    wm, actor, critic = ids(agent.world_model_params), ids(agent.actor_params), ids(agent.critic_params)
    assert not (wm & actor or wm & critic or actor & critic)
    assert wm == ids(agent.world_model.parameters())
    assert critic == ids(agent.value.parameters())
    assert ids(agent.policy.parameters()) <= actor
    assert not ids(agent.target_value.parameters()) & (wm | actor | critic)
    for opt, group in ((agent.world_model_optimizer, wm), (agent.actor_optimizer, actor),
                       (agent.critic_optimizer, critic)):
        assert ids(p for g in opt.param_groups for p in g["params"]) == group


def test_actor_step_changes_only_the_policy(setup):
    """(a) actor_step: world model, critic and target critic bit-identical; every policy tensor moved."""
    agent, _, states, _ = setup
    before = snapshot(agent)
    metrics, _ = agent.actor_step(states)
    changed = changed_groups(agent, before)
    assert changed["world_model"] == []  # its normaliser statistics included
    assert changed["value"] == [] and changed["target_value"] == []  # their return bounds included
    assert changed["log_alpha"] == [] and changed["reward_range"] == []
    assert sorted(changed["policy"]) == sorted(group_names(agent, "policy"))
    assert changed["return_scale"] == ["return_scale"]  # the actor's own running return spread
    assert metrics["actor_grad_norm"] > 0
    # No gradient was even written into the other modules (they would leak into a later step).
    for module in (agent.world_model, agent.value, agent.target_value):
        assert all(p.grad is None for p in module.parameters())


def test_critic_step_changes_only_the_critic(setup):
    """(b) critic_step: only value and target value move; the target by exactly tau toward the value."""
    agent, batch, states, next_states = setup
    with torch.no_grad():
        trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
        returns, weights, _ = agent.imagined_returns(trajectory)
    before = snapshot(agent)
    metrics = agent.critic_step(trajectory, returns, weights, agent.real_targets(batch, next_states, None), real_mix=0.5)
    changed = changed_groups(agent, before)
    assert changed["world_model"] == [] and changed["policy"] == [] and changed["log_alpha"] == []
    assert changed["return_scale"] == [] and changed["reward_range"] == []
    assert sorted(changed["value"]) == sorted(group_names(agent, "value"))
    assert changed["target_value"], "the target critic should track the critic"
    tau = agent.cfg.target_critic_tau
    for (name, target), (_, value) in zip(agent.target_value.named_parameters(), agent.value.named_parameters()):
        old = before[f"target_value.{name}"]
        torch.testing.assert_close(target, old + tau * (value - old))
    assert metrics["critic_grad_norm"] > 0


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.parametrize("symlog_values", [False, True])
def test_critic_real_mix_blends_real_one_step_targets(env_id, symlog_values):
    """real_mix=1 regresses the start states on r + gamma * (1 - terminated) * V_target(s') alone, real_mix=0
    on the imagined lambda-returns alone, and a mix in between is their weighted sum: the blend is in the loss,
    in the space the critic regresses in (raw returns, or their symlog)."""
    agent, batch, states, next_states = make_setup(env_id, symlog=symlog_values)
    space = value_space(agent)
    with torch.no_grad():
        trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
        returns, weights, _ = agent.imagined_returns(trajectory)
        prediction = agent.value.raw(trajectory.states[:, :-1])
        real = batch["reward"] + agent.cfg.gamma * (1 - batch["terminated"]) * agent.target_value(next_states)
        imagined = returns.clamp(*agent.return_bounds())
        expected_real = (prediction[:, 0] - space(real)).pow(2).mean()
        expected_imagined = ((prediction - space(imagined)).pow(2) * weights).mean()
    losses = {}
    for mix in (0.0, 1.0, 0.25):
        probe = copy.deepcopy(agent)
        losses[mix] = probe.critic_step(trajectory, returns, weights, probe.real_targets(batch, next_states, None), real_mix=mix)["critic_loss"]
    torch.testing.assert_close(losses[1.0], expected_real)
    torch.testing.assert_close(losses[0.0], expected_imagined)
    torch.testing.assert_close(losses[0.25], 0.75 * expected_imagined + 0.25 * expected_real)
    assert abs(float(expected_real - expected_imagined)) > 1e-3  # the two targets differ, so the mix shows


def test_critic_real_targets_from_replayed_sequences_are_their_lambda_returns():
    """critic_real_length > 1: with real_mix=1 the critic regresses the replayed sequences' real states on
    their lambda-returns (real rewards and endings, the target critic at each next state), mask-aware;
    the run's endings are in the sample, so a real ending shapes the targets."""
    replay, space = collect_replay("CartPole-v1", 300)
    agent = Agent(small_config(env_id="CartPole-v1", critic_real_length=16), space)
    real = replay.sample_sequences(8, 16, np.random.default_rng(0))
    assert real["terminated"][real["mask"]].sum() > 0  # random CartPole play ends every ~20 steps
    batch, _ = real_batch("CartPole-v1", batch_size=16)
    with torch.no_grad():
        states, next_states = agent.world_model.encode(torch.cat([batch["obs"], batch["next_obs"]])).chunk(2)
        trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
        returns, weights, _ = agent.imagined_returns(trajectory)
        encoded = agent.world_model.encode(torch.cat([real["obs"], real["next_obs"][:, -1:]], 1))
        mask = real["mask"]
        targets = replay_lambda_return(real["reward"], real["terminated"], agent.target_value(encoded[:, 1:]), mask,
                                       agent.cfg.gamma, agent.cfg.lambda_)
        expected = (agent.value.raw(encoded[:, :-1][mask]) - value_space(agent)(targets[mask])).pow(2).mean()
    loss = agent.critic_step(trajectory, returns, weights, agent.real_targets(batch, next_states, real), real_mix=1.0)
    torch.testing.assert_close(loss["critic_loss"], expected)


def test_world_model_step_changes_only_the_world_model(setup):
    """(c) world_model_step: policy, critic and target untouched; every world-model tensor moved."""
    agent, batch, _, _ = setup
    before = snapshot(agent)
    metrics = agent.world_model_step(batch)
    changed = changed_groups(agent, before)
    assert changed["policy"] == [] and changed["value"] == [] and changed["target_value"] == []
    assert changed["log_alpha"] == [] and changed["return_scale"] == [] and changed["reward_range"] == []
    # Every world-model parameter moved; its normaliser is the trainer's to update, from new env steps only.
    assert sorted(changed["world_model"]) == sorted(group_names(agent, "world_model"))
    assert metrics["world_model_grad_norm"] > 0


def test_warmup_update_trains_the_world_model_only(setup):
    """Agent.update with the warmup counts (actor=critic=0) must leave policy and critic exactly as they were."""
    agent, batch, _, _ = setup
    before = snapshot(agent)
    metrics = agent.update(batch, UpdateCounts(world_model=2, actor=0, critic=0), critic_real_mix=1.0)
    changed = changed_groups(agent, before)
    assert changed["policy"] == [] and changed["return_scale"] == []
    # Of the critics, only the return bounds move: they follow the rewards seen (reward_range), not a step.
    assert changed["value"] == ["value.bounds"] and changed["target_value"] == ["target_value.bounds"]
    assert changed["reward_range"] == ["reward_range"]
    assert changed["world_model"]
    assert "actor_loss" not in metrics and "critic_loss" not in metrics


def test_full_update_moves_each_group_once(setup):
    """A full update touches all three groups, yet the actor step inside it still leaves the world model alone."""
    agent, batch, _, _ = setup
    before = snapshot(agent)
    metrics = agent.update(batch, UpdateCounts(world_model=1, actor=1, critic=1), critic_real_mix=0.0)
    changed = changed_groups(agent, before)
    assert changed["world_model"] and changed["policy"] and changed["value"]
    assert {"world_model_loss", "actor_loss", "critic_loss"} <= metrics.keys()


# ---------------------------------------------------------------------- gradient flow (d)

def policy_grad_norm(agent: Agent, states: torch.Tensor) -> float:
    """Norm of d(actor loss)/d(policy params) for one imagination rollout, with no entropy bonus.

    With entropy_coef = 0 the only way the policy's parameters reach the loss is through the
    sampled actions -> dynamics / reward -> lambda-returns, so a non-zero gradient needs both a
    differentiable action sample and a world model that depends on the action.
    """
    torch.manual_seed(1)
    trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
    returns, weights, _ = agent.imagined_returns(trajectory)
    loss = actor_loss(returns, trajectory.entropies, weights, entropy_coef=0.0)
    params = list(agent.policy.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.tensor(0.0))))


def cut_action_inputs(agent: Agent, dynamics: bool, reward: bool) -> Agent:
    """A copy whose dynamics and/or reward first layers ignore the action (its input columns zeroed)."""
    agent = copy.deepcopy(agent)
    s = agent.cfg.state_dim
    layers = []
    if dynamics:
        layers += [member[0] for member in agent.world_model.dynamics.members]
    if reward:
        layers.append(agent.world_model.reward.net[0])
    with torch.no_grad():
        for layer in layers:
            layer.weight[:, s:] = 0.0
    return agent


def test_actor_gradient_flows_through_dynamics_and_reward(setup):
    """(d) The return-only actor loss has a non-zero policy gradient via either path, and none without both.

    For the discrete policy this is the straight-through estimator at work: a plain
    Categorical.sample() one-hot carries no gradient, so the first assertion would fail.
    """
    agent, _, states, _ = setup
    # Give the critic a non-trivial output so returns depend on where the dynamics lead.
    with torch.no_grad():
        agent.target_value.net[-1].weight.normal_(0.0, 0.5)
    assert policy_grad_norm(agent, states) > 1e-6
    assert policy_grad_norm(cut_action_inputs(agent, dynamics=True, reward=False), states) > 1e-6
    assert policy_grad_norm(cut_action_inputs(agent, dynamics=False, reward=True), states) > 1e-6
    assert policy_grad_norm(cut_action_inputs(agent, dynamics=True, reward=True), states) == 0.0


def test_actor_gradient_leaves_no_trace_in_world_model(setup):
    """Gradients flow *through* the world model during imagination, but none are stored in it."""
    agent, _, states, _ = setup
    trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
    returns, weights, _ = agent.imagined_returns(trajectory)
    loss = actor_loss(returns, trajectory.entropies, weights, entropy_coef=0.0)
    # The world-model parameters are in the graph (they would receive a gradient if asked) ...
    wm_grads = torch.autograd.grad(loss, list(agent.world_model.dynamics.parameters()), retain_graph=True,
                                   allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in wm_grads)
    # ... but the agent's own actor step asks for the policy's only.
    agent.actor_step(states)
    assert all(p.grad is None for p in agent.world_model.parameters())


# ---------------------------------------------------------------------- gradient clipping

@pytest.mark.parametrize("step", ["world_model", "actor", "critic"])
def test_each_optimizer_applies_gradients_clipped_to_grad_clip(setup, step):
    """Where the gradient is larger than grad_clip (1.0), each optimizer is handed one of norm exactly grad_clip."""
    agent, batch, states, next_states = setup
    optimizer, params = {"world_model": (agent.world_model_optimizer, agent.world_model_params),
                         "actor": (agent.actor_optimizer, agent.actor_params),
                         "critic": (agent.critic_optimizer, agent.critic_params)}[step]
    with torch.no_grad():  # make every gradient large: a critic far from its targets, a sharper world model
        for p in params:
            p.mul_(3.0)
    applied = []
    hook = optimizer.register_step_pre_hook(lambda opt, *_: applied.append(
        [p.grad.clone() for g in opt.param_groups for p in g["params"]]))
    if step == "world_model":
        norm = agent.world_model_step(batch)["world_model_grad_norm"]
    elif step == "actor":
        norm = agent.actor_step(states)[0]["actor_grad_norm"]
    else:
        trajectory = imagine(agent.world_model, agent.policy, states, agent.cfg.horizon)
        returns, weights, _ = agent.imagined_returns(trajectory.detach())
        norm = agent.critic_step(trajectory.detach(), returns.detach(), weights, agent.real_targets(batch, next_states, None), 0.5)["critic_grad_norm"]
    hook.remove()
    assert float(norm) > agent.cfg.grad_clip  # the unclipped norm, as logged: clipping had work to do
    grads = applied[0]
    total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    torch.testing.assert_close(total, torch.tensor(agent.cfg.grad_clip), rtol=1e-5, atol=1e-6)
