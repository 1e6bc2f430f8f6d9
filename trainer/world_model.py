"""The world model: everything that learns to predict the environment (diagram 2, phase 1).

Owns the observation normaliser, encoder, representation learner (and its decoder), dynamics,
reward and continue predictors, and in sequence mode the recurrent memory. Its parameters are
exactly the world-model optimizer's.

Beliefs: every head reads a *belief*, the encoded state of what is seen now and, in sequence
mode, beside it a memory of the steps before (a GRU over past states and actions, zero at an
episode's or a sequence's start). In flat mode the belief is the state. A partially observed env
(CartPole without velocities) is learnable only through the memory: one observation does not
say where the pole is going.

The memory is a function of a window: training sequences of `sequence_length` steps start from
zero, so no memory ever trained on has seen more than `history_length = sequence_length - 1`
steps. Acting reads the same window (`recall` over the episode's last `history_length` steps),
in the trainer and in the exported graphs alike: an agent acts on the memories it learned on,
and a client's history of that many steps is all the server needs (any replica can answer).
"""

from __future__ import annotations

import torch
from torch import nn

from .components import (
    CNNEncoder,
    ContinuePredictor,
    DynamicsModel,
    MLPEncoder,
    ObservationNormalizer,
    RepresentationLearner,
    RewardPredictor,
    Rollout,
    orthogonal_init,
)
from .config import Config
from .envs import SpaceInfo
from .sequence import sequence_frames


class WorldModel(nn.Module):
    def __init__(self, cfg: Config, space: SpaceInfo):
        super().__init__()
        self.space = space
        self.normalizer = ObservationNormalizer(space.obs_shape, enabled=cfg.obs_norm and not space.is_image)
        sizes = cfg.sizes
        self.encoder: nn.Module = CNNEncoder(space.obs_shape, sizes) if space.is_image else MLPEncoder(space.obs_shape[0], sizes)
        self.repr_learner = RepresentationLearner(space.obs_shape, sizes)
        self.dynamics = DynamicsModel(sizes, space.action_dim, cfg.dynamics, cfg.dynamics_ensemble, cfg.dynamics_std)
        self.reward = RewardPredictor(sizes, space.action_dim, cfg.symlog)
        self.continue_ = ContinuePredictor(sizes)
        self.memory = nn.GRUCell(cfg.state_dim + space.action_dim, cfg.memory_dim) if cfg.remembers else None
        self.state_dim, self.memory_dim = cfg.state_dim, cfg.memory_dim
        self.sample_std = cfg.dynamics_std if cfg.dynamics_sample else 0.0  # imagination's next-state noise
        # Transformer dynamics trained on sequences attend over an imagined rollout's earlier steps too,
        # as over a training sequence's: at most this many of them (the rest of a sequence_length window).
        # Trained on flat batches they never saw a second position, and imagine one step at a time.
        self.dynamics_context = cfg.sequence_length - 1 if cfg.dynamics == "transformer" and cfg.sequence_mode else 0
        if cfg.orthogonal_init:
            orthogonal_init(self)

    def prepare_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observation -> network input: images to [0, 1] minus 0.5, vectors normalised."""
        if self.space.is_image:
            return obs.float() / 255.0 - 0.5
        return self.normalizer(obs.float())

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw observations [..., *obs_shape] -> states [..., state_dim].

        Sequences [B, T, ...] go through the encoder flattened to [B * T, ...] (one batch, as the
        seed's diagram 4 draws it) and come back as [B, T, state_dim]."""
        lead = obs.shape[: obs.dim() - len(self.space.obs_shape)]
        flat = obs.reshape(-1, *self.space.obs_shape)
        return self.repr_learner.encode(self.encoder(self.prepare_obs(flat))).reshape(*lead, -1)

    def belief(self, state: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """State [N, state_dim] (and memory [N, memory_dim], zero when None) -> belief; the state alone in flat mode."""
        if self.memory is None:
            return state
        return torch.cat([state, memory if memory is not None else state.new_zeros(*state.shape[:-1], self.memory_dim)], -1)

    def first_belief(self, obs: torch.Tensor) -> torch.Tensor:
        """The belief at observations with nothing remembered: an episode's start, an exported graph's input."""
        return self.belief(self.encode(obs))

    def belief_after(self, obs: torch.Tensor, history_obs: torch.Tensor | None = None,
                     history_action: torch.Tensor | None = None, history_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The belief at observations [B, ...] after the steps before them: observations [B, L, ...] and the
        agent actions taken after each, oldest first, `history_mask` [B, L] saying which are real. What the
        exported graphs compute; without a history (or a memory) it is `first_belief`."""
        if history_obs is None or self.memory is None:
            return self.first_belief(obs)
        memory = self.recall(self.encode(history_obs), self.encode_action(history_action), history_mask)
        return self.belief(self.encode(obs), memory)

    def remember(self, memory: torch.Tensor | None, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor | None:
        """The memory after a step from `state` with `action` (encoded); None in flat mode."""
        if self.memory is None:
            return None
        memory = memory if memory is not None else state.new_zeros(state.shape[0], self.memory_dim)
        return self.memory(torch.cat([state, action], -1), memory)

    def recall(self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor | None:
        """The memory after a window of steps: states [B, L, state_dim] and encoded actions [B, L, action_dim],
        oldest first; `mask` [B, L] (True: a real step) skips padding. An empty window is the zero memory."""
        if self.memory is None:
            return None
        memory = states.new_zeros(states.shape[0], self.memory_dim)
        for t in range(states.shape[1]):
            after = self.remember(memory, states[:, t], actions[:, t])
            memory = after if mask is None else torch.where(mask[:, t, None], after, memory)
        return memory

    def observe(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(states, next_states, beliefs, next_beliefs) of a batch's observations.

        Without a memory the beliefs are the states. Sequence batches [B, T]: the memory runs over
        the sequence from zero, so step t's belief remembers steps 0..t-1 of it; a flat batch is a
        batch of sequences of one step."""
        if "mask" in batch:  # each frame once (`sequence_frames`)
            encoded = self.encode(sequence_frames(batch)[0])
            states, next_states = encoded[:, :-1], encoded[:, 1:]
        else:
            states, next_states = self.encode(torch.cat([batch["obs"], batch["next_obs"]])).chunk(2)
        if self.memory is None:
            return states, next_states, states, next_states
        action = self.encode_action(batch["action"])
        if "mask" not in batch:
            return states, next_states, self.belief(states), self.belief(next_states, self.remember(None, states, action))
        memories = [states.new_zeros(states.shape[0], self.memory_dim)]
        for t in range(states.shape[1]):
            memories.append(self.remember(memories[-1], states[:, t], action[:, t]))
        memory = torch.stack(memories, 1)
        return states, next_states, self.belief(states, memory[:, :-1]), self.belief(next_states, memory[:, 1:])

    def decode(self, belief: torch.Tensor) -> torch.Tensor:
        """Belief (its state part) -> reconstructed observation in env units (images in [0, 255])."""
        out = self.repr_learner.decode(belief[..., : self.state_dim])
        if self.space.is_image:
            return ((out + 0.5) * 255.0).clamp(0.0, 255.0)
        return self.normalizer.denormalize(out)

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Stored agent action (index or [-1, 1] vector) -> the dynamics/reward input."""
        if self.space.discrete:
            return torch.nn.functional.one_hot(action.long(), self.space.action_dim).float()
        return action.float()

    def transition(self, belief: torch.Tensor, action: torch.Tensor, rollout: Rollout | None = None,
                   past: tuple[torch.Tensor, torch.Tensor] | None = None, sample: bool = False) -> torch.Tensor:
        """The recurrent half of an imagined step: the next belief (the ensemble's vote for the next
        state, and the memory that has seen this step). With `sample` (and `dynamics_sample` on), the
        next state is drawn from the dynamics' Normal around that vote, reparameterised.

        Transformer dynamics continue the rollout's token sequence: pass the `rollout` (a new
        `Rollout()` at its start; each step adds its (belief, encoded action) token) and the last
        `dynamics_context` of them are attended over; or, as the exported graph does, `past` = (tokens
        [B, L, ...], mask [B, L] of the real ones). Without either a step stands alone."""
        return self._transition(belief, action, rollout, past, sample)[0]

    def _transition(self, belief, action, rollout=None, past=None, sample=False) -> tuple[torch.Tensor, torch.Tensor]:
        """(next belief, the ensemble's disagreement on it [...]: its members' standard deviation,
        averaged over the state, as `dynamics_disagreement` measures it in training; 0 for one member)."""
        if rollout is not None and self.dynamics_context:
            members = self.dynamics.rollout_means(belief, action, rollout, self.dynamics_context)
        else:
            members = self.dynamics.member_means(belief, action, None, *(past or (None, None)))
        next_state, disagreement = members.mean(0), members.std(0, unbiased=False).mean(-1)
        if sample and self.sample_std:
            next_state = next_state + self.sample_std * torch.randn_like(next_state)
        if self.memory is None:
            return next_state, disagreement
        memory = self.remember(belief[..., self.state_dim:], belief[..., : self.state_dim], action)
        return self.belief(next_state, memory), disagreement

    def outcome(self, belief: torch.Tensor, action: torch.Tensor, next_belief: torch.Tensor):
        """The rest of an imagined step: (reward in env units, continue probability of `next_belief`).

        Nothing here feeds the next step, so imagination runs it once over all H steps at the end.
        """
        return self.reward.mean(belief, action), torch.sigmoid(self.continue_.net(next_belief).squeeze(-1))

    @torch.no_grad()
    def step(self, belief: torch.Tensor, action: torch.Tensor, past_state: torch.Tensor | None = None,
             past_action: torch.Tensor | None = None, past_mask: torch.Tensor | None = None):
        """One imagined transition, as exported: (next belief, reward, continue probability, the
        ensemble's disagreement). Agent actions; for transformer dynamics, the rollout's earlier
        beliefs and agent actions, padded."""
        action = self.encode_action(action)
        past = None
        if past_state is not None:
            past = (torch.cat([past_state, self.encode_action(past_action)], -1), past_mask)
        next_belief, disagreement = self._transition(belief, action, past=past)
        return (next_belief, *self.outcome(belief, action, next_belief), disagreement)
