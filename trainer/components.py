"""The networks of diagram 1, with the seed's names and default sizes.

observation -> Encoder (MLP or CNN) -> features [256] -> RepresentationLearner.encode -> state [64]
state -> DynamicsModel, RewardPredictor, ContinuePredictor, PolicyHead, ValueFunction
state -> RepresentationLearner.decode -> observation (reconstruction)

Dynamics, reward and continue heads take an optional `context` (diagram 4's sequence context);
only transformer dynamics read it, the MLP heads ignore it; policy and value read the belief alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal

from .config import Sizes
from .envs import SpaceInfo
from .sequence import SequenceContext

# Argument validation costs more than the arithmetic in a 15-step imagination loop of small MLPs.
torch.distributions.Distribution.set_default_validate_args(False)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(torch.abs(x))


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), nn.SiLU()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


def orthogonal_init(module: nn.Module) -> None:
    """Diagram 6, failure 1, remedy 4: orthogonal weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain=math.sqrt(2))
            nn.init.zeros_(m.bias)


class ObservationNormalizer(nn.Module):
    """Running mean/variance of observations (diagram 6: 'obs should be ~ N(0,1)').

    Lives in the encoder's graph so that an exported encoder takes raw observations.
    """

    def __init__(self, shape: tuple[int, ...], enabled: bool):
        super().__init__()
        self.enabled = enabled
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: torch.Tensor) -> None:
        if not self.enabled:
            return
        n = batch.shape[0]
        b_mean, b_var = batch.mean(0), batch.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean += delta * (n / total).float()
        m2 = self.var * self.count.float() + b_var * n + delta.pow(2) * (self.count * n / total).float()
        self.var.copy_(m2 / total.float())
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return obs
        return ((obs - self.mean) / torch.sqrt(self.var + 1e-8)).clamp(-10.0, 10.0)

    def denormalize(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return obs
        return obs * torch.sqrt(self.var + 1e-8) + self.mean


class MLPEncoder(nn.Module):
    """Vector observations [B, obs] -> features [B, feature_dim]."""

    def __init__(self, obs_dim: int, sizes: Sizes):
        super().__init__()
        self.net = nn.Sequential(mlp(obs_dim, sizes.feature_dim, sizes.hidden_dim, sizes.hidden_layers - 1), nn.SiLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def cnn_layers(obs_shape: tuple[int, ...], depth: int) -> list[tuple[int, int, int, int, tuple[int, int]]]:
    """The CNN's layers for images [H, W, C]: (in channels, out channels, kernel, stride, input size)
    each; the Nature-DQN stack that the seed's 84x84 suits, at any size it can read (>= 36 px)."""
    layers, size, channels = [], tuple(obs_shape[:2]), obs_shape[-1]
    for out, kernel, stride in ((depth, 8, 4), (2 * depth, 4, 2), (2 * depth, 3, 1)):
        if min(size) < kernel:
            raise ValueError(f"images of {obs_shape[0]}x{obs_shape[1]} are too small for the CNN encoder (>= 36 px)")
        layers.append((channels, out, kernel, stride, size))
        size, channels = tuple((s - kernel) // stride + 1 for s in size), out
    return layers


def conv_output(obs_shape: tuple[int, ...], depth: int) -> tuple[int, int, int]:
    """(channels, height, width) of the last conv layer's output."""
    *_, (_, out, kernel, stride, size) = cnn_layers(obs_shape, depth)
    return (out, *((s - kernel) // stride + 1 for s in size))


class CNNEncoder(nn.Module):
    """Image observations [B, H, W, C] (channels last, as gymnasium gives them) -> features."""

    def __init__(self, obs_shape: tuple[int, ...], sizes: Sizes):
        super().__init__()
        convs = [m for c_in, c_out, k, s, _ in cnn_layers(obs_shape, sizes.cnn_depth) for m in (nn.Conv2d(c_in, c_out, k, s), nn.SiLU())]
        self.conv = nn.Sequential(*convs, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(math.prod(conv_output(obs_shape, sizes.cnn_depth)), sizes.feature_dim), nn.SiLU())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(obs.movedim(-1, -3)))


class CNNDecoder(nn.Module):
    """state -> image [B, H, W, C], the CNN encoder's layers mirrored: each transposed layer gives back
    exactly the size its conv layer read (output padding restores what the stride rounded off)."""

    def __init__(self, obs_shape: tuple[int, ...], sizes: Sizes):
        super().__init__()
        self.shape = conv_output(obs_shape, sizes.cnn_depth)
        self.fc = nn.Linear(sizes.state_dim, math.prod(self.shape))
        layers: list[nn.Module] = []
        for c_in, c_out, k, s, size in reversed(cnn_layers(obs_shape, sizes.cnn_depth)):
            out_size = tuple((n - k) // s + 1 for n in size)
            padding = tuple(n - ((m - 1) * s + k) for n, m in zip(size, out_size))
            layers += [nn.SiLU(), nn.ConvTranspose2d(c_out, c_in, k, s, output_padding=padding)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """[..., state_dim] -> [..., H, W, C] (sequences [B, T, ...] decode flattened, as they encode)."""
        x = self.fc(state).reshape(-1, *self.shape)
        image = self.deconv(x).movedim(-3, -1)
        return image.reshape(*state.shape[:-1], *image.shape[1:])


class RepresentationLearner(nn.Module):
    """Autoencoder between features and states: `encode()` features -> state, `decode()` state -> obs.

    States are layer-normalised (no affine), so their scale cannot shrink to make the dynamics
    loss trivially zero: one of the guards against representation collapse (the other is the
    stop-gradient on the dynamics target, and the decoder that must reconstruct from them).
    """

    def __init__(self, obs_shape: tuple[int, ...], sizes: Sizes):
        super().__init__()
        self.to_state = nn.Linear(sizes.feature_dim, sizes.state_dim)
        self.norm = nn.LayerNorm(sizes.state_dim, elementwise_affine=False)
        if len(obs_shape) == 3:
            self.decoder: nn.Module = CNNDecoder(obs_shape, sizes)
        else:
            self.decoder = mlp(sizes.state_dim, obs_shape[0], sizes.hidden_dim, sizes.hidden_layers)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_state(features))

    def decode(self, state: torch.Tensor) -> torch.Tensor:
        return self.decoder(state)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask, written out (matmul, softmax) so that it
    exports to ONNX as plain operators and runs the same in onnxruntime."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: tuple | None = None):
        """x [B, T, width], mask [B or 1, 1, T, T] (True: may attend) -> [B, T, width].

        With `cache` (the keys and values of the tokens before x, or () for none) x's tokens attend
        over those and themselves, unmasked, and (output, keys and values so far) comes back: a
        rollout's next token costs one token, not the whole window again."""
        b, t, width = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if cache:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(width // self.heads)
        weights = (scores if mask is None else scores.masked_fill(~mask, -math.inf)).softmax(-1)
        out = self.out((weights @ v).transpose(1, 2).reshape(b, t, width))
        return out if cache is None else (out, (k, v))


class TransformerMember(nn.Module):
    """One transformer dynamics member (diagram 4's TransformerDynamics): (state, action) tokens with
    learned positions, pre-norm attention blocks, and a residual step read from each position.

    With a sequence context the tokens are the sequence's and position t sees steps <= t (and no
    padding); without one each (state, action) is a sequence of length 1, the single-step fallback.
    """

    def __init__(self, sizes: Sizes, action_dim: int):
        super().__init__()
        width = sizes.hidden_dim
        self.embed = nn.Linear(sizes.belief_dim + action_dim, width)
        self.position = nn.Parameter(torch.zeros(sizes.context, width))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm1": nn.LayerNorm(width), "attention": CausalSelfAttention(width, sizes.attention_heads),
                           "norm2": nn.LayerNorm(width), "mlp": mlp(width, width, 2 * width, sizes.hidden_layers)})
            for _ in range(sizes.transformer_layers))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, sizes.state_dim))

    def forward(self, x: torch.Tensor, context: SequenceContext | None = None, past: torch.Tensor | None = None,
                past_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [..., state + action] -> [..., state_dim]; with `context`, x is [B, T, state + action].

        With `past` ([B, L, state + action], the tokens of the steps before x in an imagined rollout)
        x [B, ...] is the next token of that sequence: it sits at position n (the number of real past
        tokens, `past_mask` [B, L] a real prefix; all L when None) and attends over them, as it would
        in training. Padded past tokens are never attended to, so a padded window gives the exact
        window's answer."""
        if past is not None:
            return self._continued(x, past, past_mask)
        if context is None:
            tokens, mask = x.reshape(-1, 1, x.shape[-1]), torch.ones(1, 1, 1, 1, dtype=torch.bool, device=x.device)
        else:
            tokens, mask = x, context.attention_mask()
        return self.head(self._encode(tokens, mask)).reshape(*x.shape[:-1], -1)

    def _encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            h = h + block["attention"](block["norm1"](h), mask)
            h = h + block["mlp"](block["norm2"](h))
        return h

    def next_step(self, x: torch.Tensor, cache: list | None, position: int) -> tuple[torch.Tensor, list]:
        """x [B, state + action], the token at `position` of a rollout whose earlier tokens left `cache`
        (per block: their keys and values; None at the start) -> (its step [B, state_dim], the cache
        with it). The same numbers as `forward` with those tokens as `past`."""
        h = self.embed(x)[:, None] + self.position[position]
        caches = []
        for i, block in enumerate(self.blocks):
            attended, kept = block["attention"](block["norm1"](h), None, cache[i] if cache else ())
            h = h + attended
            h = h + block["mlp"](block["norm2"](h))
            caches.append(kept)
        return self.head(h[:, 0]), caches

    def _continued(self, x: torch.Tensor, past: torch.Tensor, past_mask: torch.Tensor | None) -> torch.Tensor:
        b, length = past.shape[0], past.shape[1]
        if past_mask is None:
            tokens, n = torch.cat([past, x[:, None]], 1), torch.full((b,), length, device=x.device)
        else:
            n = past_mask.long().sum(1)
            index = torch.arange(length + 1, device=x.device)
            tokens = torch.where((index[None] == n[:, None])[..., None], x[:, None], torch.cat([past, torch.zeros_like(x[:, None])], 1))
        index = torch.arange(tokens.shape[1], device=x.device)
        mask = (index[None, :, None] >= index[None, None, :]) & (index[None, None, :] <= n[:, None, None])  # causal, no padding
        h = self._encode(tokens, mask[:, None])
        return self.head(h[torch.arange(b, device=x.device), n])


class Rollout:
    """An imagined rollout's earlier steps, as transformer dynamics attend over them: their (belief,
    action) tokens and, while those fit the window, each member's per-block keys and values."""

    def __init__(self):
        self.tokens: list[torch.Tensor] = []
        self.caches: list | None = []


class DynamicsModel(nn.Module):
    """(belief, action) -> Normal over the next state; an ensemble votes by its mean (diagram 6, failure 2).

    Members are MLPs, or transformers that attend over the sequence context (`kind`); `members` of
    them; `std` the Normal's fixed scale. The belief is the state, and in sequence mode the memory
    beside it (`WorldModel.belief`).
    """

    def __init__(self, sizes: Sizes, action_dim: int, kind: str, members: int, std: float):
        super().__init__()
        self.attends = kind == "transformer"
        self.members = nn.ModuleList(
            TransformerMember(sizes, action_dim) if self.attends
            else mlp(sizes.belief_dim + action_dim, sizes.state_dim, sizes.hidden_dim, sizes.hidden_layers)
            for _ in range(members)
        )
        self.std = std
        self.state_dim = sizes.state_dim

    def member_means(self, belief: torch.Tensor, action: torch.Tensor, context: SequenceContext | None = None,
                     past: torch.Tensor | None = None, past_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[K, ..., state_dim]: each member predicts a residual step from the state, normalised like encoded states.
        `past`, `past_mask`: an imagined rollout's earlier tokens, for transformers (`TransformerMember`).

        The normalisation keeps imagined states on the encoder's manifold, so a long rollout
        cannot drift into regions where reward and value heads extrapolate wildly.
        """
        x = torch.cat([belief, action], -1)
        steps = ([m(x, context, past, past_mask) for m in self.members] if self.attends
                 else [m(x) for m in self.members])
        return self._means(belief, steps)

    def _means(self, belief: torch.Tensor, steps: list[torch.Tensor]) -> torch.Tensor:
        state = belief[..., : self.state_dim]
        return torch.stack([torch.nn.functional.layer_norm(state + step, state.shape[-1:]) for step in steps])

    def rollout_means(self, belief: torch.Tensor, action: torch.Tensor, rollout: "Rollout", window: int) -> torch.Tensor:
        """`member_means` of a transformer's next step in an imagined `rollout` (updated here): it attends
        over the rollout's last `window` earlier steps, from their cached keys and values while they
        fit the window, by recomputing the window once it slides."""
        x = torch.cat([belief, action], -1)
        n = len(rollout.tokens)
        if n < window and rollout.caches is not None:
            outs = [m.next_step(x, rollout.caches[i] if n else None, n) for i, m in enumerate(self.members)]
            steps, rollout.caches = [o[0] for o in outs], [o[1] for o in outs]
        else:
            rollout.caches = None  # the window slides: positions move, cached keys are stale
            past = torch.stack(rollout.tokens[-window:], 1) if n else None
            steps = [m(x, None, past) for m in self.members]
        rollout.tokens.append(x)
        return self._means(belief, steps)

    def forward(self, belief: torch.Tensor, action: torch.Tensor, context: SequenceContext | None = None) -> Normal:
        return Normal(self.member_means(belief, action, context).mean(0), self.std)


class RewardPredictor(nn.Module):
    """(state, action) -> Normal over the reward of that transition (symlog space when configured).

    Conditioned on the action because a transition's reward may depend on it (Pendulum's torque cost).
    """

    def __init__(self, sizes: Sizes, action_dim: int, symlog: bool):
        super().__init__()
        self.net = mlp(sizes.belief_dim + action_dim, 1, sizes.hidden_dim, sizes.hidden_layers)
        self.symlog = symlog

    def forward(self, state: torch.Tensor, action: torch.Tensor, context: SequenceContext | None = None) -> Normal:
        return Normal(self.net(torch.cat([state, action], -1)).squeeze(-1), 1.0)

    def mean(self, state: torch.Tensor, action: torch.Tensor, context: SequenceContext | None = None) -> torch.Tensor:
        """The predicted reward in env units."""
        mu = self(state, action, context).mean
        return symexp(mu) if self.symlog else mu


class ContinuePredictor(nn.Module):
    """state -> Bernoulli that the episode continues from this state (1 - terminated)."""

    def __init__(self, sizes: Sizes):
        super().__init__()
        self.net = mlp(sizes.belief_dim, 1, sizes.hidden_dim, sizes.hidden_layers)

    def forward(self, state: torch.Tensor, context: SequenceContext | None = None) -> Bernoulli:
        return Bernoulli(logits=self.net(state).squeeze(-1))


class PolicyHead(nn.Module):
    """state -> action distribution parameters: logits (Categorical) or mean, std (tanh-squashed Normal)."""

    def __init__(self, sizes: Sizes, space: SpaceInfo):
        super().__init__()
        self.discrete = space.discrete
        self.action_dim = space.action_dim
        out = space.action_dim if space.discrete else 2 * space.action_dim
        self.net = mlp(sizes.belief_dim, out, sizes.hidden_dim, sizes.hidden_layers)

    def params(self, state: torch.Tensor, context: SequenceContext | None = None) -> tuple[torch.Tensor, ...]:
        """The raw outputs that are exported: (logits,) or (mean, std)."""
        out = self.net(state)
        if self.discrete:
            return (out,)
        mean, raw_std = out.chunk(2, -1)
        return mean, 0.05 + torch.nn.functional.softplus(raw_std + 0.5)

    def forward(self, state: torch.Tensor, context: SequenceContext | None = None) -> "ActionDistribution":
        return ActionDistribution(self.discrete, self.params(state, context))


class ActionDistribution:
    """The policy's distribution in the agent's action encoding (one-hot, or a vector in [-1, 1]).

    `rsample` is differentiable: straight-through one-hot for Categorical, reparameterised tanh
    for Normal, so the actor's gradient reaches the policy through dynamics and reward. Written
    out rather than through torch.distributions: it runs 15 times per update, and the generic
    classes cost more in operator calls than the arithmetic.
    """

    def __init__(self, discrete: bool, params: tuple[torch.Tensor, ...]):
        self.discrete = discrete
        if discrete:
            self.log_probs = params[0].log_softmax(-1)
            self.probs = self.log_probs.exp()
        else:
            self.mean, self.std = params

    def _index(self) -> torch.Tensor:
        """A class index drawn by inverting the cumulative distribution (one uniform per row)."""
        cdf = self.probs.detach().cumsum(-1)
        u = torch.rand_like(cdf[..., :1]) * cdf[..., -1:]
        return (cdf < u).sum(-1).clamp_max(self.probs.shape[-1] - 1)

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoded action with gradient, entropy estimate per sample)."""
        if self.discrete:
            probs = self.probs
            onehot = torch.nn.functional.one_hot(self._index(), probs.shape[-1]).to(probs.dtype)
            return onehot + probs - probs.detach(), -(probs * self.log_probs).sum(-1)
        noise = torch.randn_like(self.mean)
        action = torch.tanh(self.mean + self.std * noise)
        # log N(raw; mean, std) - log|d tanh/d raw|, with raw - mean = std * noise
        log_prob = -0.5 * noise.pow(2) - self.std.log() - _HALF_LOG_2PI - torch.log1p(-action.pow(2) + 1e-6)
        return action, -log_prob.sum(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """log pi(action) of an encoded action (one-hot, or a vector in [-1, 1]), with gradient to the parameters."""
        if self.discrete:
            return (self.log_probs * action).sum(-1)
        action = action.clamp(-1 + 1e-6, 1 - 1e-6)
        noise = (torch.atanh(action) - self.mean) / self.std
        log_prob = -0.5 * noise.pow(2) - self.std.log() - _HALF_LOG_2PI - torch.log1p(-action.pow(2) + 1e-6)
        return log_prob.sum(-1)

    def sample(self) -> torch.Tensor:
        """Env-ready agent action: class index, or a vector in [-1, 1]."""
        if self.discrete:
            return self._index()
        return torch.tanh(self.mean + self.std * torch.randn_like(self.mean))

    def mode(self) -> torch.Tensor:
        if self.discrete:
            return self.probs.argmax(-1)
        return torch.tanh(self.mean)


_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class ValueFunction(nn.Module):
    """state -> value (the raw output is in symlog space when configured), inside `bounds`.

    `bounds` is the interval every return lies in given the rewards seen (Agent.return_bounds):
    a value outside it is wrong whatever the state, so the head answers the nearest possible one.
    That holds for imagined states far from any data too, where a regression in symlog space would
    otherwise extrapolate exponentially (the runaway of failure 4).
    """

    def __init__(self, sizes: Sizes, symlog: bool):
        super().__init__()
        self.net = mlp(sizes.belief_dim, 1, sizes.hidden_dim, sizes.hidden_layers)
        self.symlog = symlog
        self.register_buffer("bounds", torch.tensor([-math.inf, math.inf]))

    def raw(self, state: torch.Tensor, context: SequenceContext | None = None) -> torch.Tensor:
        return self.net(state).squeeze(-1)

    def forward(self, state: torch.Tensor, context: SequenceContext | None = None) -> torch.Tensor:
        out = self.raw(state, context)
        return (symexp(out) if self.symlog else out).clamp(self.bounds[0], self.bounds[1])
