"""The losses of diagram 2 as pure functions of tensors, each testable on its own.

world_model_loss -> world-model optimizer; actor_loss -> actor optimizer; critic_loss -> critic
optimizer. Which parameters each may touch is decided in `agent.py`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .components import symexp, symlog
from .sequence import context_of, masked_mean, sequence_frames
from .world_model import WorldModel


def lambda_return(
    rewards: torch.Tensor, continues: torch.Tensor, values: torch.Tensor, gamma: float, lambda_: float
) -> torch.Tensor:
    """R_t = r_t + gamma * c_t * ((1 - lambda) * V_{t+1} + lambda * R_{t+1}), with R_H = V_H.

    rewards, continues: [B, H] (c_t is the continue probability of the state reached by step t);
    values: [B, H + 1]. Returns [B, H].
    """
    horizon = rewards.shape[1]
    next_return = values[:, -1]
    returns = []
    for t in reversed(range(horizon)):
        next_return = rewards[:, t] + gamma * continues[:, t] * (
            (1 - lambda_) * values[:, t + 1] + lambda_ * next_return
        )
        returns.append(next_return)
    return torch.stack(returns[::-1], 1)


def replay_lambda_return(rewards: torch.Tensor, terminated: torch.Tensor, next_values: torch.Tensor, mask: torch.Tensor,
                         gamma: float, lambda_: float) -> torch.Tensor:
    """Lambda-returns of replayed sequences: the real rewards and endings, bootstrapped from the values
    of the states each step reached (DreamerV3's replay value loss).

    rewards, terminated, mask: [B, T] (`Replay.sample_sequences`); next_values: [B, T], the value of
    step t's next state. A real ending stops the sum; a sequence's last real step (cut by the
    sequence's length, a truncation or the ring's newest step) bootstraps from its next value alone.
    Entries where `mask` is false are meaningless. Returns [B, T].
    """
    length = rewards.shape[1]
    next_return = next_values[:, -1]
    returns = []
    for t in reversed(range(length)):
        follows = mask[:, t + 1].to(rewards.dtype) if t + 1 < length else torch.zeros_like(rewards[:, t])
        blend = lambda_ * follows
        next_return = rewards[:, t] + gamma * (1.0 - terminated[:, t]) * ((1 - blend) * next_values[:, t] + blend * next_return)
        returns.append(next_return)
    return torch.stack(returns[::-1], 1)


def discount_weights(continues: torch.Tensor) -> torch.Tensor:
    """w_t = prod_{k<t} c_k: how likely imagined step t is still inside the episode. [B, H]."""
    ones = torch.ones_like(continues[:, :1])
    return torch.cumprod(torch.cat([ones, continues[:, :-1]], 1), 1).detach()


@dataclass
class WorldModelLosses:
    total: torch.Tensor
    metrics: dict[str, torch.Tensor]  # scalars, still on the device
    states: torch.Tensor  # encoded states of the batch's observations (for imagination starts)
    next_states: torch.Tensor


def world_model_loss(wm: WorldModel, batch: dict[str, torch.Tensor], weights: dict[str, float], symlog_rewards: bool,
                     adjust_endings: bool = True) -> WorldModelLosses:
    """dynamics (MSE to the stop-gradient encoded next state) + reward (NLL) + continue (BCE) + decoder (MSE).

    Extra endings (`ending_next_obs`) are logit-adjusted back to the replay's odds with `adjust_endings`;
    without it the head learns the enriched batch's odds, reading near-ending states as more likely endings.

    A flat batch holds [B, ...] transitions; a sequence batch (`Replay.sample_sequences`) [B, T, ...]
    ones and a `mask`: its steps pass the sequence context to the components, and every loss
    counts real steps only. A sequence batch of length 1 gives the flat batch's losses.
    """
    obs, next_obs, mask = batch["obs"], batch["next_obs"], batch.get("mask")
    states, next_states, beliefs, next_beliefs = wm.observe(batch)
    action = wm.encode_action(batch["action"])
    context = None if mask is None else context_of(batch, beliefs, action)

    # Stop-gradient on the target: the encoder cannot make dynamics easy by moving the target.
    member_means = wm.dynamics.member_means(beliefs, action, context)
    dynamics = masked_mean((member_means - next_states.detach()).pow(2).mean(0), mask)

    reward_pred = wm.reward(beliefs, action, context).mean
    reward_target = symlog(batch["reward"]) if symlog_rewards else batch["reward"]
    reward = 0.5 * masked_mean((reward_pred - reward_target).pow(2), mask)  # Gaussian NLL, unit std, up to a constant

    continue_target = 1.0 - batch["terminated"]
    continue_logits = wm.continue_(next_beliefs, context).logits
    if "ending_next_obs" in batch:  # extra endings for the continue head alone (Replay.sample's `endings`)
        ending_logits = wm.continue_(wm.first_belief(batch["ending_next_obs"])).logits
        p, k, n = batch["ending_share"], len(ending_logits), len(continue_logits)
        share = (k + n * p) / (k + n)  # the endings' share of this batch; unadjusted, the head learns it, not the replay's
        cont = continue_loss(torch.cat([continue_logits, ending_logits]),
                             torch.cat([batch["terminated"], torch.ones_like(ending_logits)]), share, p if adjust_endings else share)
    else:
        cont = continue_loss(continue_logits, batch["terminated"], mask=mask)

    if mask is None:
        encoded, observed, real = torch.cat([states, next_states]), torch.cat([obs, next_obs]), None
    else:  # each of a sequence's frames once
        (observed, real), encoded = sequence_frames(batch), torch.cat([states, next_states[:, -1:]], 1)
    # Per entry (for images, per pixel and channel, on [0, 1]): the `decoder_loss` metric's unit.
    decoder = masked_mean((wm.repr_learner.decode(encoded) - wm.prepare_obs(observed)).pow(2), real)

    total = (
        weights["dynamics"] * dynamics + weights["reward"] * reward
        + weights["continue"] * cont + weights["decoder"] * decoder
    )
    with torch.no_grad():
        reward_env = symexp(reward_pred) if symlog_rewards else reward_pred
        metrics = {
            "world_model_loss": total.detach(),
            "dynamics_loss": dynamics.detach(),
            "reward_loss": reward.detach(),
            "continue_loss": cont.detach(),
            "decoder_loss": decoder.detach(),
            "reward_mae": masked_mean((reward_env - batch["reward"]).abs(), mask),
            "continue_acc": masked_mean(((continue_logits > 0).float() == continue_target).float(), mask),
            "state_std": (states if mask is None else states[mask]).std(0).mean(),
            # The ensemble's disagreement on real steps (0 for one member): its uncertainty where the data is.
            "dynamics_disagreement": masked_mean(member_means.std(0, unbiased=False).mean(-1), mask),
        }
    return WorldModelLosses(total, metrics, states, next_states)


def continue_loss(logits: torch.Tensor, terminated: torch.Tensor, batch_share: torch.Tensor | float | None = None,
                  replay_share: torch.Tensor | float | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of continue logits against 1 - terminated.

    Where the batch holds endings at `batch_share` (in expectation) and the replay at `replay_share`,
    the loss sees the logits moved by logit(batch_share) - logit(replay_share), so the head itself
    learns the replay's odds while seeing its rare endings often (logit adjustment for a shifted
    class prior). Without shares (every update's usual case) it is plain BCE, with no extra operations.
    """
    if batch_share is None:
        if mask is not None:  # the real steps of a sequence batch
            return masked_mean(F.binary_cross_entropy_with_logits(logits, 1.0 - terminated, reduction="none"), mask)
        return F.binary_cross_entropy_with_logits(logits, 1.0 - terminated)
    q = torch.as_tensor(batch_share, dtype=logits.dtype, device=logits.device).clamp(1e-6, 1 - 1e-6)
    p = torch.as_tensor(replay_share, dtype=logits.dtype, device=logits.device).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy_with_logits(logits - (torch.logit(q) - torch.logit(p)), 1.0 - terminated)


def actor_loss(
    returns: torch.Tensor, entropy: torch.Tensor, weights: torch.Tensor, entropy_coef: float | torch.Tensor,
    return_scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """-mean(R / scale) - entropy_coef * entropy, each imagined step weighted by its continue product."""
    return -(weights * returns).mean() / return_scale - entropy_coef * (weights * entropy).mean()


def logit_penalty(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean(w * mean over actions of the centred logit squared): a pull toward indifference that, unlike
    the entropy bonus, keeps its gradient when the policy saturates. log_probs [B, H, actions]."""
    centred = log_probs - log_probs.mean(-1, keepdim=True)
    return (weights.detach() * centred.pow(2).mean(-1)).mean()


def critic_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE(V, R.detach()): the target never carries gradient back to the policy or world model."""
    err = (prediction - target.detach()).pow(2)
    return (err * weights).mean() if weights is not None else err.mean()
