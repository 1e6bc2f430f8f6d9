"""The imagination rollout of diagram 2, phase 2: H steps of policy and dynamics from real states."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .components import PolicyHead, Rollout
from .world_model import WorldModel


@dataclass
class Imagination:
    states: torch.Tensor  # [B, H + 1, state_dim]; states[:, 0] are the real start states
    actions: torch.Tensor  # [B, H, action_dim] (one-hot or [-1, 1] vector)
    rewards: torch.Tensor  # [B, H]: reward of transition t
    continues: torch.Tensor  # [B, H]: continue probability of the state reached by transition t
    entropies: torch.Tensor  # [B, H]

    def detach(self) -> "Imagination":
        return Imagination(*(getattr(self, f.name).detach() for f in fields(self)))


def imagine(wm: WorldModel, policy: PolicyHead, start: torch.Tensor, horizon: int) -> Imagination:
    """Roll the policy through the learned dynamics; differentiable with respect to the actions.

    Only policy and dynamics are recurrent, so they alone run step by step; reward and continue
    of all H transitions are then one batched call (`WorldModel.outcome`): the numbers that
    `WorldModel.step` gives one step at a time, in far fewer operator calls.

    The world model is not updated by anything computed here (the actor step takes gradients for
    the policy's parameters only), but gradients flow *through* it to the actions.
    """
    state = start.detach()
    states, actions, entropies, rollout = [state], [], [], Rollout()
    for _ in range(horizon):
        action, entropy = policy(state).rsample()
        state = wm.transition(state, action, rollout, sample=True)
        actions.append(action)
        entropies.append(entropy)
        states.append(state)
    states_t, actions_t = torch.stack(states, 1), torch.stack(actions, 1)
    rewards, continues = wm.outcome(states_t[:, :-1], actions_t, states_t[:, 1:])
    return Imagination(states_t, actions_t, rewards, continues, torch.stack(entropies, 1))
