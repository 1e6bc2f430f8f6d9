"""The agent and its update: three optimizers, each stepped by its own loss only (diagram 3).

The seed's KEY INSIGHT, made structural: every step takes `torch.autograd.grad` of its loss
with respect to its own parameter group and nothing else. The actor's loss flows *through*
dynamics, reward and value to the actions, but no gradient is ever written into those
modules, so there is nothing to save and restore.
"""

from __future__ import annotations

import copy
import math
from collections import deque

import numpy as np
import torch
from torch import nn

from .components import PolicyHead, ValueFunction, orthogonal_init, symexp, symlog
from .config import Config, UpdateCounts
from .distributed import Ranks
from .envs import SpaceInfo
from .imagination import Imagination, imagine
from .losses import (actor_loss, critic_loss, discount_weights, lambda_return, logit_penalty, replay_lambda_return,
                     world_model_loss)
from .world_model import WorldModel


def own_gradient_step(loss: torch.Tensor, params: list[nn.Parameter], optimizer: torch.optim.Optimizer, clip: float,
                      normalize: bool = False, layers: dict[str, list[int]] | None = None,
                      metrics: dict[str, torch.Tensor] | None = None, ranks: Ranks | None = None) -> torch.Tensor:
    """Gradients of `loss` for `params` only, clipped at `clip` (or, with `normalize`, always rescaled
    to norm `clip`), applied by `optimizer`. Returns the norm before clipping; with `layers` (name ->
    indices into `params`), each layer's own norm goes into `metrics` as `grad_norm/<name>`. With
    `ranks` (data-parallel), the gradients are first averaged over the ranks, so all apply one step.

    A non-finite gradient is not applied (the norm is still returned, so diagnostics see it).
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        # autograd.grad keeps the layout backward chose (a convolution's weight gradient comes back
        # channels-last); the fused Adam kernel on CUDA refuses a gradient whose strides differ from its parameter's.
        p.grad = torch.zeros_like(p) if g is None else g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
    if ranks is not None:
        ranks.average([p.grad for p in params])
    if layers:
        norms = torch._foreach_norm([p.grad for p in params])
        for name, index in layers.items():
            metrics[f"grad_norm/{name}"] = torch.stack([norms[i] for i in index]).norm()
    norm = torch.nn.utils.clip_grad_norm_(params, clip)
    if normalize:  # clip_grad_norm_ only shrinks; scale a small gradient up to norm `clip` as well
        torch._foreach_mul_([p.grad for p in params], (clip / norm.clamp(min=1e-12)).clamp(min=1.0))
    if torch.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def adam(params, lr: float, eps: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with its fused kernel (one pass over all parameters instead of several per tensor);
    weight decay, when asked for, is decoupled from the gradient (AdamW's)."""
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=True, fused=True)


def to_floats(metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Scalar metric tensors -> floats, in one transfer from the device."""
    values = torch.stack([v.detach().float().reshape(()).cpu() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values))


class Agent(nn.Module):
    def __init__(self, cfg: Config, space: SpaceInfo):
        super().__init__()
        self.cfg = cfg
        self.space = space
        self.world_model = WorldModel(cfg, space)
        self.policy = PolicyHead(cfg.sizes, space)
        self.value = ValueFunction(cfg.sizes, cfg.symlog)
        if cfg.orthogonal_init:
            orthogonal_init(self.policy)
            orthogonal_init(self.value)
        # Small last layers: an untrained policy is near uniform and an untrained critic near zero.
        for head in (self.policy.net[-1], self.value.net[-1]):
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False)
        default_target = 0.5 * math.log(space.action_dim) if space.discrete else -float(space.action_dim)
        self.target_entropy = cfg.target_entropy if cfg.target_entropy is not None else default_target
        self.log_alpha = nn.Parameter(torch.tensor(math.log(max(cfg.entropy_coef, 1e-8))))
        self.register_buffer("return_scale", torch.tensor(1.0))
        # Smallest and largest reward seen in training batches: what bounds every return (return_bounds).
        self.register_buffer("reward_range", torch.tensor([math.inf, -math.inf]))
        self.ranks: Ranks | None = None  # data-parallel: set by the trainer (distributed.py)

        self.world_model_params = list(self.world_model.parameters())
        # Per-layer gradient norms of the world model (the seed's failure 1: "print grad norms for each layer").
        index = {id(p): i for i, p in enumerate(self.world_model_params)}
        self.world_model_layers = {name: [index[id(p)] for p in module.parameters(recurse=False)]
                                   for name, module in self.world_model.named_modules()
                                   if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))}
        self.actor_params = list(self.policy.parameters()) + ([self.log_alpha] if cfg.adaptive_entropy else [])
        self.critic_params = list(self.value.parameters())
        self.world_model_optimizer = adam(self.world_model_params, cfg.world_model_lr, 1e-8, cfg.world_model_weight_decay)
        actor_groups = [{"params": list(self.policy.parameters())}]
        if cfg.adaptive_entropy:  # the temperature must move on the scale of the policy's own change
            actor_groups.append({"params": [self.log_alpha], "lr": 1e-2})
        self.actor_optimizer = adam(actor_groups, cfg.actor_lr, 1e-5)
        self.critic_optimizer = adam(self.critic_params, cfg.critic_lr, 1e-5)
        self.reinforce = cfg.actor_gradient == "reinforce"
        self.all_actions = cfg.actor_gradient == "all_actions"
        if self.all_actions and not space.discrete:
            raise ValueError("actor_gradient=all_actions needs a discrete action space: a continuous one has no actions to list")

    def apply_rates(self) -> None:
        """The config's learning rates and weight decay onto the optimizers: a loaded optimizer state
        carries the rates it was saved with, and a resume may have been given new ones."""
        for group in self.world_model_optimizer.param_groups:
            group.update(lr=self.cfg.world_model_lr, weight_decay=self.cfg.world_model_weight_decay)
        self.actor_optimizer.param_groups[0]["lr"] = self.cfg.actor_lr  # (the temperature's group keeps its own)
        for group in self.critic_optimizer.param_groups:
            group["lr"] = self.cfg.critic_lr

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also loads checkpoints written before the return bounds existed (they refill from the next batches)."""
        unbounded = torch.tensor([-math.inf, math.inf])
        state_dict = {"reward_range": torch.tensor([math.inf, -math.inf]), "value.bounds": unbounded,
                      "target_value.bounds": unbounded, **state_dict}
        return super().load_state_dict(state_dict, strict, assign)

    @property
    def device(self) -> torch.device:
        return self.reward_range.device

    # ------------------------------------------------------------------ acting
    def act(self, obs: np.ndarray, deterministic: bool, window: "Window | None" = None) -> np.ndarray:
        """One observation (and, in sequence mode, the window of its episode so far) -> one agent
        action (index, or vector in [-1, 1])."""
        return self.step(obs, window, deterministic)

    @torch.no_grad()
    def step(self, obs: np.ndarray, window: "Window | None", deterministic: bool,
             action: np.ndarray | None = None) -> np.ndarray:
        """One step of an episode: the policy's action (or `action`, when one is given: a random one),
        recorded in the episode's `window` (sequence mode). The observation is encoded once for both,
        and not at all for a given action in flat mode."""
        wm, state = self.world_model, None
        if action is None or (wm.memory is not None and window is not None):
            state = wm.encode(torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0))
        if action is None:
            dist = self.policy(wm.belief(state, window.memory() if window is not None else None))
            action = (dist.mode() if deterministic else dist.sample())[0].cpu().numpy()
        if wm.memory is not None and window is not None:
            window.record(state, wm.encode_action(torch.as_tensor(action, device=self.device).unsqueeze(0)))
        return action

    def entropy_coef(self) -> torch.Tensor | float:
        return self.log_alpha.exp().detach() if self.cfg.adaptive_entropy else self.cfg.entropy_coef

    def return_bounds(self) -> tuple[float, float]:
        """The interval every discounted return lies in, given the rewards seen so far.

        Rewards in [r_min, r_max] and episodes that may end (value 0 after the end) give returns in
        [min(0, r_min) / (1 - gamma), max(0, r_max) / (1 - gamma)]. Unbounded when gamma is 1 or
        return_bounds is off; `critic_target_clip`, when set, narrows it further.
        """
        low, high = -math.inf, math.inf
        r_min, r_max = self.reward_range.tolist()
        if self.cfg.return_bounds and self.cfg.gamma < 1 and r_min <= r_max:  # none seen yet: no bound
            low, high = min(0.0, r_min) / (1 - self.cfg.gamma), max(0.0, r_max) / (1 - self.cfg.gamma)
        if self.cfg.critic_target_clip is not None:
            low, high = max(low, -self.cfg.critic_target_clip), min(high, self.cfg.critic_target_clip)
        return low, high

    def critic_values(self, states: torch.Tensor) -> torch.Tensor:
        """Bootstrap values for returns: the slow target critic when configured (diagram 6, failure 4).

        Both critics answer inside `return_bounds`, so a value extrapolated off the data cannot feed
        itself through the next target (the runaway loop of failure 4)."""
        return (self.target_value if self.cfg.target_critic else self.value)(states)

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, torch.Tensor], counts: UpdateCounts, critic_real_mix: float,
               real: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One batch: `counts` world-model, actor and critic steps, in that order. Diagram 3 computes
        every loss in one forward pass and steps the three optimizers at the end; here the world model
        steps first and the actor and critic imagine with the updated one (a departure, in docs/learning.md's
        table). Each step still writes its own parameters only.

        `real` (replayed sequences, when `critic_real_length` > 1) gives the critic's real targets as
        lambda-returns over them; without it they are the batch's one-step targets.

        The steps return their metrics as tensors; they reach the host once, here, at the end.
        """
        metrics: dict[str, torch.Tensor] = {}
        low, high = batch["reward"].min(), batch["reward"].max()
        if self.ranks is not None:
            low, high = self.ranks.extremes(low, high)
        self.reward_range.copy_(torch.stack([torch.minimum(self.reward_range[0], low),
                                             torch.maximum(self.reward_range[1], high)]))
        bounds = torch.tensor(self.return_bounds(), device=self.device)
        self.value.bounds.copy_(bounds)
        self.target_value.bounds.copy_(bounds)
        for _ in range(counts.world_model):
            metrics.update(self.world_model_step(batch))
        if counts.actor == 0 and counts.critic == 0:
            return to_floats(metrics)
        batch, states, next_states = self.imagination_starts(batch)
        imagined = None
        for _ in range(counts.actor):
            step_metrics, imagined = self.actor_step(states)
            metrics.update(step_metrics)
        if counts.critic:
            if imagined is None:
                with torch.no_grad():
                    trajectory = imagine(self.world_model, self.policy, states, self.cfg.horizon)
                    returns, weights, _ = self.imagined_returns(trajectory)
                    imagined = (trajectory, returns, weights)
            targets = self.real_targets(batch, next_states, real) if critic_real_mix > 0 else None
            for _ in range(counts.critic):
                metrics.update(self.critic_step(*imagined, targets, critic_real_mix))
        return to_floats(metrics)

    @torch.no_grad()
    def imagination_starts(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """(flat batch, beliefs, next beliefs) of the batch's real steps, by the (updated) world model:
        where the actor and critic start. A sequence batch gives each of its real steps, flattened."""
        _, _, states, next_states = self.world_model.observe(batch)
        if "mask" not in batch:
            return batch, states, next_states
        mask = batch["mask"]
        return {k: v[mask] for k, v in batch.items() if k != "mask"}, states[mask], next_states[mask]

    def world_model_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = world_model_loss(
            self.world_model, batch,
            {"dynamics": self.cfg.dynamics_weight, "reward": self.cfg.reward_weight,
             "continue": self.cfg.continue_weight, "decoder": self.cfg.decoder_weight},
            self.cfg.symlog, self.cfg.continue_endings_adjusted,
        )
        metrics = dict(losses.metrics)
        metrics["world_model_grad_norm"] = own_gradient_step(
            losses.total, self.world_model_params, self.world_model_optimizer, self.cfg.grad_clip,
            layers=self.world_model_layers, metrics=metrics, ranks=self.ranks)
        return metrics

    def imagined_returns(self, trajectory: Imagination) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lambda-returns [B, H], discount weights [B, H], bootstrap values [B, H + 1]) of an imagined trajectory."""
        values = self.critic_values(trajectory.states)
        returns = lambda_return(trajectory.rewards, trajectory.continues, values, self.cfg.gamma, self.cfg.lambda_)
        return returns, discount_weights(trajectory.continues), values

    def actor_step(self, states: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple]:
        """Returns metrics and the detached (trajectory, returns, weights) for the critic to learn from.

        With `reinforce` the rollout carries no gradient at all: the policy learns from the
        likelihood of its own imagined actions, weighted by their advantage over the critic, in one
        batched call over all H steps afterwards. With `all_actions` (discrete) neither: at every
        imagined state the policy's probabilities weight each action's one-step advantage
        (`action_values`). Otherwise the returns are differentiated back through the dynamics to
        the actions (the seed's diagram 2).
        """
        with torch.set_grad_enabled(not (self.reinforce or self.all_actions)):
            trajectory = imagine(self.world_model, self.policy, states, self.cfg.horizon)
            returns, weights, values = self.imagined_returns(trajectory)
        if self.cfg.return_norm:
            with torch.no_grad():
                every = returns.detach().flatten() if self.ranks is None else self.ranks.gather(returns.detach().flatten())
                low, high = torch.quantile(every, returns.new_tensor([0.05, 0.95]))
                spread = high - low
                self.return_scale.mul_(0.99).add_(0.01 * spread)
        scale = torch.clamp(self.return_scale, min=1.0) if self.cfg.return_norm else 1.0
        penalised = self.cfg.logit_penalty > 0 and self.space.discrete
        # The policy again at the imagined states (no gradient back into the rollout), where a loss needs it.
        dist = self.policy(trajectory.states[:, :-1].detach()) if self.reinforce or self.all_actions or penalised else None
        if self.reinforce:
            objective = dist.log_prob(trajectory.actions) * (returns - values[:, :-1])
            entropies = dist.rsample()[1]
        elif self.all_actions:
            advantages = self.action_values(trajectory.states[:, :-1]) - values[:, :-1, None]
            objective = (dist.probs * advantages).sum(-1)
            entropies = dist.rsample()[1]
        else:
            objective, entropies = returns, trajectory.entropies
        loss = actor_loss(objective, entropies, weights, self.entropy_coef(), scale)
        if penalised:
            loss = loss + self.cfg.logit_penalty * logit_penalty(dist.log_probs, weights)
        entropy = entropies.mean()
        if self.cfg.adaptive_entropy:
            loss = loss + self.log_alpha * (entropy.detach() - self.target_entropy)
        norm = own_gradient_step(loss, self.actor_params, self.actor_optimizer, self.cfg.grad_clip,
                                 self.cfg.actor_grad_normalize, ranks=self.ranks)
        return {
            "actor_loss": loss.detach(),
            "actor_grad_norm": norm,
            "entropy": entropy.detach(),
            "entropy_coef": torch.as_tensor(self.entropy_coef(), device=self.device),
            "mean_imagined_return": returns.detach().mean(),
            "imagined_reward_mean": trajectory.rewards.detach().mean(),
            "return_scale": torch.as_tensor(scale, device=self.device),
        }, (trajectory.detach(), returns.detach(), weights)

    @torch.no_grad()
    def action_values(self, states: torch.Tensor) -> torch.Tensor:
        """Q(s, a) = r(s, a) + gamma * c(s') * V(s') of every discrete action a, one step through the
        model from each of `states` [..., belief]: [..., actions]. The exact difference between
        actions that straight-through only linearises, at the cost of one model step per action."""
        wm, n = self.world_model, self.space.action_dim
        flat = states.reshape(-1, states.shape[-1]).repeat(n, 1)
        actions = wm.encode_action(torch.arange(n, device=states.device).repeat_interleave(len(flat) // n))
        reached = wm.transition(flat, actions)
        rewards, continues = wm.outcome(flat, actions, reached)
        q = rewards + self.cfg.gamma * continues * self.critic_values(reached)
        return q.reshape(n, *states.shape[:-1]).movedim(0, -1)

    @torch.no_grad()
    def real_targets(self, batch: dict[str, torch.Tensor], next_states: torch.Tensor,
                     real: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(real states, their targets) for the critic: lambda-returns over the replayed sequences
        `real`, or one-step targets of the batch (states None: the imagination starts themselves)."""
        if real is None:
            return None, batch["reward"] + self.cfg.gamma * (1.0 - batch["terminated"]) * self.critic_values(next_states)
        _, _, states, reached = self.world_model.observe(real)
        mask = real["mask"]
        returns = replay_lambda_return(real["reward"], real["terminated"], self.critic_values(reached), mask,
                                       self.cfg.gamma, self.cfg.lambda_)
        return states[mask], returns[mask]

    def critic_step(self, trajectory: Imagination, returns: torch.Tensor, weights: torch.Tensor,
                    real: tuple[torch.Tensor | None, torch.Tensor] | None, real_mix: float) -> dict[str, torch.Tensor]:
        """MSE to detached imagined lambda-returns, blended with real targets (`real_targets`) by `real_mix`."""
        to_raw = symlog if self.cfg.symlog else (lambda x: x)
        prediction = self.value.raw(trajectory.states[:, :-1])
        returns = returns.clamp(*self.return_bounds())  # the bootstrap values are inside; predicted rewards may stray
        loss = (1.0 - real_mix) * critic_loss(prediction, to_raw(returns), weights)
        if real_mix > 0:
            real_states, real_target = real
            real_prediction = prediction[:, 0] if real_states is None else self.value.raw(real_states)
            loss = loss + real_mix * critic_loss(real_prediction, to_raw(real_target))
        norm = own_gradient_step(loss, self.critic_params, self.critic_optimizer, self.cfg.grad_clip, ranks=self.ranks)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target_value.parameters()), list(self.value.parameters()),
                                 self.cfg.target_critic_tau)
            values = symexp(prediction) if self.cfg.symlog else prediction
        return {
            "critic_loss": loss.detach(),
            "critic_grad_norm": norm,
            "critic_value_mean": values.mean(),
            "critic_td_error": (values - returns).abs().mean(),
            "critic_real_mix": torch.tensor(real_mix, device=self.device),
        }


class Window:
    """An episode's last `history_length` steps as the world model encoded them (states and actions,
    oldest first): what its memory is recalled from at every step (`WorldModel.recall`), the same
    window a served agent reads from a client's history."""

    def __init__(self, world_model: WorldModel, length: int):
        self.world_model = world_model
        self.states: deque[torch.Tensor] = deque(maxlen=length)
        self.actions: deque[torch.Tensor] = deque(maxlen=length)

    def clear(self) -> None:
        self.states.clear()
        self.actions.clear()

    def record(self, state: torch.Tensor, action: torch.Tensor) -> None:
        self.states.append(state)  # (a window of length 0 keeps nothing)
        self.actions.append(action)

    def memory(self) -> torch.Tensor | None:
        """The memory of the window ([1, memory_dim]); None (zero) while it is empty."""
        if not self.states:
            return None
        return self.world_model.recall(torch.stack(tuple(self.states), 1), torch.stack(tuple(self.actions), 1))


class EpisodePlayer:
    """`act(obs) -> env action` over whole episodes, for `play_episodes`: keeps the episode's window
    (sequence mode) and clears it when `reset` starts an episode."""

    def __init__(self, agent: Agent, deterministic: bool):
        self.agent, self.deterministic = agent, deterministic
        self.window = Window(agent.world_model, agent.cfg.history_length)

    def reset(self) -> None:
        self.window.clear()

    def __call__(self, obs: np.ndarray):
        return self.agent.space.to_env_action(self.agent.step(obs, self.window, self.deterministic))
