"""The actor's estimators (`actor_gradient`): through the dynamics, by likelihood ratio, or (discrete
actions) by every action's one-step value.

Both are run on a world model whose reward is rigged to prefer one CartPole action, so the right
answer is known: the policy must move toward that action, and away from it when the sign flips.
"""

from __future__ import annotations

import pytest
import torch

from builders import real_batch, small_config
from reverie.trainer.agent import Agent


def rigged_agent(env_id: str, actor_gradient: str, prefer: int) -> tuple[Agent, torch.Tensor]:
    """An agent whose imagined reward is high for action `prefer` (CartPole: that class; Pendulum: a
    torque of that sign, 0 -> positive) and low for the other, whatever the state, and whose critic and
    continue head are flat, so only the action decides a return."""
    batch, space = real_batch(env_id, batch_size=64)
    agent = Agent(small_config(env_id=env_id, actor_gradient=actor_gradient, entropy_coef=0.0,
                               return_norm=False, actor_lr=1e-2), space)
    agent.world_model.normalizer.update(batch["obs"])
    column = agent.cfg.state_dim + (prefer if space.discrete else 0)
    with torch.no_grad():
        for module in (agent.world_model.reward.net, agent.world_model.continue_.net, agent.target_value.net):
            for layer in module[::2]:
                layer.weight.zero_()
                layer.bias.zero_()
        first, second, last = agent.world_model.reward.net[::2]
        first.weight[0, column] = 4.0 if space.discrete or prefer == 0 else -4.0  # unit 0 fires for the preferred action
        second.weight[0, 0] = 1.0
        last.weight[0, 0] = 1.0
        last.bias.fill_(-1.0)
        agent.world_model.continue_.net[-1].bias.fill_(10.0)  # every imagined step continues
        states = agent.world_model.encode(batch["obs"])
    return agent, states


def preference(agent: Agent, states: torch.Tensor, prefer: int) -> float:
    """How much the policy favours the preferred action: its probability, or its mean torque's signed size."""
    dist = agent.policy(states)
    if agent.space.discrete:
        return dist.probs[:, prefer].mean().item()
    return (torch.tanh(dist.mean) * (1 if prefer == 0 else -1)).mean().item()


@pytest.mark.parametrize("env_id, actor_gradient", [
    (env_id, gradient) for env_id in ("CartPole-v1", "Pendulum-v1") for gradient in ("reinforce", "dynamics")
] + [("CartPole-v1", "all_actions")])
@pytest.mark.parametrize("prefer", [0, 1])
def test_the_actor_moves_toward_the_rewarded_action(env_id, actor_gradient, prefer):
    agent, states = rigged_agent(env_id, actor_gradient, prefer)
    with torch.no_grad():
        rewards = [agent.world_model.reward.mean(states, torch.eye(2)[a].expand(len(states), 2)) if agent.space.discrete
                   else agent.world_model.reward.mean(states, torch.full((len(states), 1), 1.0 - 2 * a))
                   for a in (prefer, 1 - prefer)]
    assert (rewards[0] > rewards[1] + 1.0).all()
    before = preference(agent, states, prefer)
    for _ in range(20):
        agent.actor_step(states)
    after = preference(agent, states, prefer)
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_log_prob_of_a_sample_is_the_density_it_was_drawn_from(env_id):
    """log pi(a) read back from an encoded action equals the log-density the sample was drawn with
    (the continuous case inverts the tanh; the entropy estimate of a sample is -log pi of it)."""
    agent, states = rigged_agent(env_id, "reinforce", 0)
    with torch.no_grad():
        agent.policy.net[-1].weight.normal_(0.0, 0.3)
        dist = agent.policy(states)
        action, entropy = dist.rsample()
        if agent.space.discrete:
            for a in range(2):
                assert torch.equal(dist.log_prob(torch.eye(2)[a].expand(len(states), 2)), dist.log_probs[:, a])
        else:
            assert torch.allclose(dist.log_prob(action), -entropy, atol=1e-3)


def test_all_actions_values_each_action_one_model_step_ahead():
    """Q(s, a) of every action is the reward of a plus the discounted, continued value of the state a
    reaches, each computed by hand through the same world model and target critic."""
    agent, states = rigged_agent("CartPole-v1", "all_actions", 1)
    with torch.no_grad():
        agent.target_value.net[-1].bias.fill_(3.0)  # a value the continue product must carry
        q = agent.action_values(states[:5].expand(2, 3, 5, -1))
        assert q.shape == (2, 3, 5, 2)
        wm = agent.world_model
        for a in range(2):
            action = torch.eye(2)[a].expand(5, 2)
            reached = wm.transition(states[:5], action)
            reward, cont = wm.outcome(states[:5], action, reached)
            expected = reward + agent.cfg.gamma * cont * agent.target_value(reached)
            assert torch.allclose(q[1, 2, :, a], expected, atol=1e-5)
    assert (q[..., 1] > q[..., 0] + 1.0).all()  # the rigged reward prefers action 1


def test_all_actions_is_refused_for_continuous_actions():
    batch, space = real_batch("Pendulum-v1", batch_size=4)
    with pytest.raises(ValueError, match="all_actions needs a discrete action space"):
        Agent(small_config(env_id="Pendulum-v1", actor_gradient="all_actions"), space)


@pytest.mark.parametrize("penalty", [0.0, 0.05])
def test_logit_penalty_pulls_a_saturated_policy_back_where_no_action_is_better(penalty):
    """Where every action earns the same, a saturated policy's entropy has no gradient, so its logits
    stay where they drifted; `logit_penalty` pulls them back toward each other."""
    agent, states = rigged_agent("CartPole-v1", "dynamics", 0)
    agent.cfg.logit_penalty = penalty
    with torch.no_grad():
        agent.world_model.reward.net[0].weight.zero_()  # no action is preferred any more
        agent.policy.net[-1].bias.copy_(torch.tensor([8.0, -8.0]))  # a saturated preference for action 0

    def gap() -> float:
        logits = agent.policy.params(states)[0]
        return (logits[:, 0] - logits[:, 1]).abs().mean().item()

    before = gap()
    for _ in range(30):
        agent.actor_step(states)
    if penalty:
        assert gap() < 0.5 * before, (before, gap())
    else:
        assert gap() > 0.9 * before, (before, gap())
