"""Diagram 6: the five failure modes, detected from the logged metric rows while training.

Each detector is a pure function of the recent rows (oldest first) that returns True when the
seed's symptom is present. `diagnose` names every mode that fires; the loop logs each with the
seed's remedies, which exist as configuration keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

Row = dict[str, object]


def _series(rows: list[Row], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def _flat(values: list[float], tolerance: float) -> bool:
    """Relative spread below `tolerance`."""
    scale = max(abs(sum(values) / len(values)), 1e-8)
    return (max(values) - min(values)) / scale < tolerance


def _growing(values: list[float], factor: float) -> bool:
    """Mostly rising, and the last value `factor` times the first in magnitude."""
    rises = sum(b > a for a, b in zip(values, values[1:]))
    return rises >= 0.75 * (len(values) - 1) and abs(values[-1]) >= factor * max(abs(values[0]), 1e-8)


def world_model_not_learning(rows: list[Row]) -> bool:
    """dynamics_loss and reward_mae flat while world_model_grad_norm is tiny."""
    dyn, mae, grad = _series(rows, "dynamics_loss"), _series(rows, "reward_mae"), _series(rows, "world_model_grad_norm")
    if min(len(dyn), len(mae), len(grad)) < 3:
        return False
    return _flat(dyn, 0.02) and _flat(mae, 0.02) and max(grad) < 1e-3


def policy_exploits_model(rows: list[Row]) -> bool:
    """mean_imagined_return rising strongly while eval_return stays flat in the real env."""
    imagined, real = _series(rows, "mean_imagined_return"), _series(rows, "eval_return")
    if len(imagined) < 3 or len(real) < 3:
        return False
    rise = imagined[-1] - imagined[0]
    real_range = max(real) - min(real)
    return _growing(imagined, 1.5) and rise > 0 and real_range < 0.1 * max(abs(sum(real) / len(real)), 1.0)


def gradient_explosion(rows: list[Row]) -> bool:
    """actor_grad_norm grows tenfold (or becomes non-finite), or any loss turns NaN."""
    grad = [float(r["actor_grad_norm"]) for r in rows if "actor_grad_norm" in r]
    losses = [float(v) for r in rows for k, v in r.items() if k.endswith("_loss") and isinstance(v, (int, float))]
    if any(not math.isfinite(v) for v in grad + losses):
        return True
    return len(grad) >= 3 and _growing(grad, 10.0)


def critic_divergence(rows: list[Row]) -> bool:
    """critic_loss, critic_value_mean and critic_td_error all growing fivefold together."""
    series = [_series(rows, k) for k in ("critic_loss", "critic_value_mean", "critic_td_error")]
    if min(len(s) for s in series) < 3:
        return False
    return all(_growing(s, 5.0) for s in series)


def policy_converges_too_fast(rows: list[Row], solved_return: float | None = None) -> bool:
    """entropy collapses (below 5% of its early level) while eval_return plateaus below solved."""
    entropy, real = _series(rows, "entropy"), _series(rows, "eval_return")
    if len(entropy) < 3 or len(real) < 3:
        return False
    plateau = _flat(real[-3:], 0.05)
    solved = solved_return is not None and real[-1] >= solved_return
    return max(entropy) > 0 and entropy[-1] < 0.05 * max(entropy[: len(entropy) // 2 + 1]) and plateau and not solved


@dataclass(frozen=True)
class FailureMode:
    name: str
    detect: Callable[..., bool]
    remedies: tuple[str, ...]


FAILURE_MODES: tuple[FailureMode, ...] = (
    FailureMode("world_model_not_learning", world_model_not_learning, (
        "increase world_model_lr (1e-4 -> 1e-3)", "check gradient flow per layer",
        "normalise observations (obs_norm=true)", "orthogonal init (orthogonal_init=true)")),
    FailureMode("policy_exploits_model", policy_exploits_model, (
        "train the world model on diverse data (epsilon > 0)", "more world-model capacity or updates",
        "regularise the world model", "dynamics ensemble (dynamics_ensemble=5)")),
    FailureMode("gradient_explosion", gradient_explosion, (
        "gradient clipping (grad_clip=1.0)", "shorter imagination horizon (horizon=10 or 5)",
        "lower actor_lr (3e-5 -> 1e-5)", "return normalisation (return_norm=true)")),
    FailureMode("critic_divergence", critic_divergence, (
        "lower critic_lr (3e-5 -> 1e-5)", "target critic (target_critic=true)",
        "clip critic targets (critic_target_clip=100)", "lambda-returns (lambda_=0.95)")),
    FailureMode("policy_converges_too_fast", policy_converges_too_fast, (
        "increase entropy_coef (0.01 -> 0.05)", "lower actor_lr",
        "epsilon-greedy exploration (epsilon=0.1)", "adaptive entropy (adaptive_entropy=true)")),
)


def diagnose(rows: list[Row], solved_return: float | None = None) -> list[FailureMode]:
    """Every failure mode whose symptom shows in `rows` (the recent window, oldest first)."""
    found = []
    for mode in FAILURE_MODES:
        fired = mode.detect(rows, solved_return) if mode.name == "policy_converges_too_fast" else mode.detect(rows)
        if fired:
            found.append(mode)
    return found
