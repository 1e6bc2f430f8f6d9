"""The world model: everything that learns to predict the environment (diagram 2, phase 1).

Owns the observation normaliser, encoder, representation learner (and its decoder), dynamics,
reward and continue predictors. Its parameters are exactly the world-model optimizer's.
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
    orthogonal_init,
)
from .config import Config
from .envs import SpaceInfo


class WorldModel(nn.Module):
    def __init__(self, cfg: Config, space: SpaceInfo):
        super().__init__()
        self.space = space
        self.normalizer = ObservationNormalizer(space.obs_shape, enabled=cfg.obs_norm and not space.is_image)
        self.encoder: nn.Module = CNNEncoder(space.obs_shape, cfg) if space.is_image else MLPEncoder(space.obs_shape[0], cfg)
        self.repr_learner = RepresentationLearner(space.obs_shape, cfg)
        self.dynamics = DynamicsModel(cfg, space.action_dim)
        self.reward = RewardPredictor(cfg, space.action_dim)
        self.continue_ = ContinuePredictor(cfg)
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

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        """State -> reconstructed observation in env units (images in [0, 255])."""
        out = self.repr_learner.decode(state)
        if self.space.is_image:
            return ((out + 0.5) * 255.0).clamp(0.0, 255.0)
        return self.normalizer.denormalize(out)

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Stored agent action (index or [-1, 1] vector) -> the dynamics/reward input."""
        if self.space.discrete:
            return torch.nn.functional.one_hot(action.long(), self.space.action_dim).float()
        return action.float()

    def transition(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The recurrent half of an imagined step: the predicted next state (the ensemble's vote)."""
        return self.dynamics.member_means(state, action).mean(0)

    def outcome(self, state: torch.Tensor, action: torch.Tensor, next_state: torch.Tensor):
        """The rest of an imagined step: (reward in env units, continue probability of `next_state`).

        Nothing here feeds the next step, so imagination runs it once over all H steps at the end.
        """
        return self.reward.mean(state, action), torch.sigmoid(self.continue_.net(next_state).squeeze(-1))

    @torch.no_grad()
    def step(self, state: torch.Tensor, action: torch.Tensor):
        """One imagined transition, as exported: (next state, reward, continue probability)."""
        next_state = self.transition(state, action)
        return (next_state, *self.outcome(state, action, next_state))
