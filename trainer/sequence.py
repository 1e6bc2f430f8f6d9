"""Diagram 4's sequence context: what a batch of sequences tells every component besides its own input.

Built once per sequence batch (`context_of`) and handed to components as their `context=`
argument; flat batches have none. Masks are boolean, True where attending or counting is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SequenceContext:
    states: torch.Tensor  # [B, T, state_dim]: encoded observations
    actions: torch.Tensor  # [B, T, action_dim]: encoded actions taken after each observation
    rewards: torch.Tensor  # [B, T]
    continues: torch.Tensor  # [B, T]: 1 - terminated
    padding_mask: torch.Tensor  # [B, T] bool: the step belongs to the sequence's episode (a prefix)
    causal_mask: torch.Tensor  # [1, T, T] bool: query t may see key s <= t

    @property
    def batch_size(self) -> int:
        return self.states.shape[0]

    @property
    def sequence_length(self) -> int:
        return self.states.shape[1]

    def attention_mask(self) -> torch.Tensor:
        """[B, 1, T, T]: causal, and no padded key; a position always sees itself (no empty softmax rows)."""
        allowed = self.causal_mask[:, None] & self.padding_mask[:, None, None, :]
        return allowed | torch.eye(self.sequence_length, dtype=torch.bool, device=allowed.device)


def causal_mask(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, T, T]: True on and below the diagonal."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None]


def context_of(batch: dict[str, torch.Tensor], states: torch.Tensor, actions: torch.Tensor) -> SequenceContext:
    """The context of a sequence batch (`Replay.sample_sequences`) and its encoded states and actions."""
    return SequenceContext(states, actions, batch["reward"], 1.0 - batch["terminated"], batch["mask"],
                           causal_mask(states.shape[1], states.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `x` over the real steps of `mask` ([B, T], x [B, T, ...]); a plain mean without a mask."""
    if mask is None:
        return x.mean()
    weight = mask.to(x.dtype).reshape(*mask.shape, *(1,) * (x.dim() - mask.dim())).expand_as(x)
    return (x * weight).sum() / weight.sum().clamp(min=1)


def sequence_frames(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A sequence batch's observations once each, and which are real: [B, T + 1, ...], [B, T + 1].

    Frame t < T is the observation before step t's action, frame T the one after the last step's;
    where a run ends early (its episode's end, the replay's newest step), the observation after its
    last step sits right after it, and padding follows. Step t's next observation is frame t + 1 for
    every real step, so a sequence's frames are encoded (and decoded) once, not as `obs` and again as
    `next_obs`: half the CNN work for images."""
    obs, next_obs, mask = batch["obs"], batch["next_obs"], batch["mask"]
    ends = (mask[:, :-1] & ~mask[:, 1:]).reshape(*mask[:, 1:].shape, *(1,) * (obs.dim() - 2))
    frames = torch.cat([obs[:, :1], torch.where(ends, next_obs[:, :-1], obs[:, 1:]), next_obs[:, -1:]], 1)
    return frames, torch.cat([mask[:, :1], mask], 1)
