"""Diagram 6: the five failure modes, detected from the logged metric rows while training.

Each detector is a pure function of the recent rows (oldest first) that returns True when the
seed's symptom is present. `diagnose` names every mode that fires; the loop logs each with the
seed's remedies turned into this run's next values (`--set` lines computed from its config, never
advising a switch that is already on), and `reverie diagnose RUN_DIR` replays the same over a log.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym

from .config import FIXED_ON_RESUME, Config

log = logging.getLogger("reverie.trainer")

Row = dict[str, object]


def _series(rows: list[Row], key: str) -> list[float]:
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def _flat(values: list[float], tolerance: float) -> bool:
    """Relative spread below `tolerance`."""
    scale = max(abs(sum(values) / len(values)), 1e-8)
    return (max(values) - min(values)) / scale < tolerance


def _growing(values: list[float], factor: float) -> bool:
    """Mostly rising (of its changes: rows between evaluations may repeat a value), and the last value
    `factor` times the first in magnitude."""
    rises = sum(b > a for a, b in zip(values, values[1:]))
    falls = sum(b < a for a, b in zip(values, values[1:]))
    return rises > 0 and rises >= 0.75 * (rises + falls) and abs(values[-1]) >= factor * max(abs(values[0]), 1e-8)


def world_model_not_learning(rows: list[Row]) -> bool:
    """dynamics_loss and reward_mae flat while world_model_grad_norm is tiny."""
    dyn, mae, grad = _series(rows, "dynamics_loss"), _series(rows, "reward_mae"), _series(rows, "world_model_grad_norm")
    if min(len(dyn), len(mae), len(grad)) < 3:
        return False
    return _flat(dyn, 0.02) and _flat(mae, 0.02) and max(grad) < 1e-3


def policy_exploits_model(rows: list[Row], solved_return: float | None = None) -> bool:
    """mean_imagined_return rising strongly while eval_return stays flat in the real env (below solved:
    a critic catching up with a solved policy raises imagined returns under a flat, perfect eval), and
    dynamics_loss low (the model fits its data; a model that does not is failure 1)."""
    imagined, real, dynamics = (_series(rows, k) for k in ("mean_imagined_return", "eval_return", "dynamics_loss"))
    if len(imagined) < 3 or len(real) < 3:
        return False
    if solved_return is not None and min(real) >= solved_return:
        return False
    if dynamics and dynamics[-1] > 1.5 * min(dynamics):  # rising dynamics loss: not the seed's "low, seems good"
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
    """entropy collapses (below 5% of its early level) while eval_return plateaus below solved.

    Without a solved return this is not judged: a converged policy that has solved its env shows the
    same collapse and plateau (Pendulum-v1, whose optimal policy is near-deterministic)."""
    entropy, real = _series(rows, "entropy"), _series(rows, "eval_return")
    if solved_return is None or len(entropy) < 3 or len(real) < 3:
        return False
    plateau = _flat(real[-3:], 0.05)
    solved = real[-1] >= solved_return
    return max(entropy) > 0 and entropy[-1] < 0.05 * max(entropy[: len(entropy) // 2 + 1]) and plateau and not solved


def _fmt(value: object) -> str:
    """As `--set` reads it back: JSON, except floats in short form and strings bare (no shell quoting needed)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return value if isinstance(value, str) else json.dumps(value)


def _scaled(cfg: Config, key: str, factor: float) -> tuple[str, float]:
    return key, float(f"{getattr(cfg, key) * factor:.3g}")


def _turn_on(cfg: Config, *keys: str) -> list[tuple[str, object]]:
    """Switches that are off now, to turn on; a switch already on is no remedy."""
    return [(key, True) for key in keys if not getattr(cfg, key)]


def _world_model_remedies(cfg: Config) -> list[tuple[str, object]]:
    # Seed: raise world_model_lr (1e-4 -> 1e-3); check per-layer gradients (logged as grad_norm/<module>);
    # normalise observations; orthogonal init.
    return [_scaled(cfg, "world_model_lr", 10.0), *_turn_on(cfg, "obs_norm", "orthogonal_init")]


def _exploitation_remedies(cfg: Config) -> list[tuple[str, object]]:
    # Seed: diverse data; more capacity or train longer; model regularisation; an ensemble.
    return [
        ("epsilon", 0.1 if cfg.epsilon == 0 else min(0.5, round(2 * cfg.epsilon, 3))),
        ("total_steps", 2 * cfg.total_steps),
        ("hidden_dim", 2 * cfg.hidden_dim),
        ("world_model_weight_decay", 1e-4 if cfg.world_model_weight_decay == 0 else float(f"{10 * cfg.world_model_weight_decay:.3g}")),
        ("dynamics_ensemble", 5 if cfg.dynamics_ensemble == 1 else cfg.dynamics_ensemble + 2),
    ]


def _explosion_remedies(cfg: Config) -> list[tuple[str, object]]:
    # Seed: clipping (always on here, at grad_clip); a shorter horizon (15 -> 10 or 5); a lower actor_lr
    # (3e-5 -> 1e-5, a third); gradient normalisation. Ours: no gradient through the rollout at all.
    out: list[tuple[str, object]] = [("horizon", max(5, cfg.horizon - 5))] if cfg.horizon > 5 else []
    out += [_scaled(cfg, "actor_lr", 1 / 3), *_turn_on(cfg, "actor_grad_normalize")]
    return out + ([("actor_gradient", "reinforce")] if cfg.actor_gradient == "dynamics" else [])


def _divergence_remedies(cfg: Config) -> list[tuple[str, object]]:
    # Seed: a lower critic_lr (3e-5 -> 1e-5); a target network; clipped targets (max=100); lambda-returns (always on).
    out = [_scaled(cfg, "critic_lr", 1 / 3), *_turn_on(cfg, "target_critic", "return_bounds")]
    if cfg.target_critic:
        out.append(_scaled(cfg, "target_critic_tau", 0.5))
    clip = 100.0 if cfg.critic_target_clip is None else float(f"{cfg.critic_target_clip / 2:.3g}")
    return out + [("critic_target_clip", clip)]


def _convergence_remedies(cfg: Config) -> list[tuple[str, object]]:
    # Seed: entropy_coef x5 (0.01 -> 0.05); a lower actor_lr; epsilon-greedy; adaptive entropy.
    out = [] if cfg.adaptive_entropy else [_scaled(cfg, "entropy_coef", 5.0)]
    out.append(_scaled(cfg, "actor_lr", 1 / 3))
    if cfg.epsilon == 0:
        out.append(("epsilon", 0.1))
    return out + _turn_on(cfg, "adaptive_entropy")


@dataclass(frozen=True)
class FailureMode:
    name: str
    detect: Callable[..., bool]
    evidence: tuple[str, ...]  # the metrics the detector reads, shown with a finding
    remedies: Callable[[Config], list[tuple[str, object]]]  # the run's next values, from its current ones

    def set_lines(self, cfg: Config) -> list[str]:
        """Copy-pasteable `--set key=value` lines for this run; never one that is already so."""
        return [f"--set {key}={_fmt(value)}" for key, value in self.remedies(cfg)
                if value != getattr(cfg, key)]

    def advice(self, cfg: Config) -> str:
        """The `--set` lines as one line to act on: those a `--resume` takes, then, apart, those only a
        new run can take (the networks' shapes and parameter groups, FIXED_ON_RESUME)."""
        lines = self.set_lines(cfg)
        fresh = [line for line in lines if line.removeprefix("--set ").partition("=")[0] in FIXED_ON_RESUME]
        resumable = [line for line in lines if line not in fresh]
        parts = [" ".join(resumable)] if resumable else []
        if fresh:
            parts.append(f"a new run only (--resume refuses them): reverie train --run-dir NEW_DIR {' '.join(fresh)}")
        return "; ".join(parts) or "nothing left to turn on"


FAILURE_MODES: tuple[FailureMode, ...] = (
    FailureMode("world_model_not_learning", world_model_not_learning,
                ("dynamics_loss", "reward_mae", "world_model_grad_norm"), _world_model_remedies),
    FailureMode("policy_exploits_model", policy_exploits_model,
                ("mean_imagined_return", "eval_return", "dynamics_loss"), _exploitation_remedies),
    FailureMode("gradient_explosion", gradient_explosion, ("actor_grad_norm", "actor_loss", "critic_loss"),
                _explosion_remedies),
    FailureMode("critic_divergence", critic_divergence, ("critic_loss", "critic_value_mean", "critic_td_error"),
                _divergence_remedies),
    FailureMode("policy_converges_too_fast", policy_converges_too_fast, ("entropy", "eval_return"),
                _convergence_remedies),
)


SOLVED_AWARE = {"policy_exploits_model", "policy_converges_too_fast"}  # a solved env explains their symptom


def diagnose(rows: list[Row], solved_return: float | None = None) -> list[FailureMode]:
    """Every failure mode whose symptom shows in `rows` (the recent window, oldest first)."""
    found = []
    for mode in FAILURE_MODES:
        fired = mode.detect(rows, solved_return) if mode.name in SOLVED_AWARE else mode.detect(rows)
        if fired:
            found.append(mode)
    return found


def evidence(mode: FailureMode, rows: list[Row]) -> dict[str, list[float]]:
    """The series the detector saw, oldest first, for the metrics it reads."""
    return {key: [round(v, 4) for v in _series(rows, key)] for key in mode.evidence if _series(rows, key)}


@dataclass
class Finding:
    """One failure mode across a run: when it fired, what it saw the first time, what to try."""

    mode: FailureMode
    steps: list[int]
    first_evidence: dict[str, list[float]]


def solved_return(cfg: Config) -> float | None:
    """The eval return that counts as solved: the config's, else the env's registered reward_threshold."""
    if cfg.solved_return is not None:
        return cfg.solved_return
    try:
        return gym.spec(cfg.env_id).reward_threshold
    except gym.error.Error:  # an env id gymnasium does not know
        return None


MAX_WINDOW_ROWS = 64


def window(rows: list[Row], evaluations: int) -> list[Row]:
    """The tail of `rows` the detectors judge: from the `evaluations`-th last evaluation on, so every
    config (two rows per evaluation for vectors, ten for frames, a client world's as its evaluation
    sessions come) shows them the same number of evaluations; at most MAX_WINDOW_ROWS rows."""
    evaluated = [i for i, row in enumerate(rows) if "eval_return" in row]
    start = evaluated[-evaluations] if len(evaluated) >= evaluations else 0
    return rows[max(start, len(rows) - MAX_WINDOW_ROWS):]


def findings(rows: list[Row], evaluations: int, solved_return: float | None = None) -> list[Finding]:
    """Replays the loop's diagnosis over a whole metrics log: each row judged with its window."""
    found: dict[str, Finding] = {}
    for i in range(len(rows)):
        recent = window(rows[: i + 1], evaluations)
        for mode in diagnose(recent, solved_return):
            if mode.name not in found:
                found[mode.name] = Finding(mode, [], evidence(mode, recent))
            found[mode.name].steps.append(int(rows[i]["env_step"]))
    return list(found.values())


def judge(recent: list[Row], row: Row, cfg: Config, solved: float | None) -> tuple[list[Row], dict[str, dict]]:
    """A new metric row judged with the window before it: (the window the next row is judged with,
    the failure modes that fired, by name, each with its env step, evidence and --set lines), logged."""
    judged = window([*recent, row], cfg.diagnostics_window)
    failures = diagnose(judged, solved)
    findings = {f.name: {"env_step": row["env_step"], "evidence": evidence(f, judged), "set_lines": f.set_lines(cfg)}
                for f in failures}
    for f in failures:
        log.warning("failure mode %s at env step %d (%s); try: %s", f.name, row["env_step"],
                    ", ".join(f"{k} {v}" for k, v in findings[f.name]["evidence"].items()), f.advice(cfg))
    return judged, findings

