"""The live page's numbers, as one JSON document (`GET /live`) for the page and for scripts: what the
agent is learning (the run's metric rows, its phases and failure modes), what it is serving (versions,
reloads, requests and latency per endpoint and transport) and where its experience comes from.

Built only when asked and from what is kept anyway (the trainer's metrics.jsonl, read on from where
the last call stopped; the Prometheus registry), so a page left open costs `/act` nothing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from reverie.bundle import evaluations, latest_bundle, versions
from reverie.runs import MetricRows, RunDir

from .metrics import ServiceMetrics
from .settings import ServiceSettings
from .store import ModelStore

PAGE = Path(__file__).parent / "static" / "live.html"
MAX_POINTS = 400  # per curve: older rows are thinned evenly, the newest always kept
CURVES = (  # the metric-row keys the page draws; a row without one has no point there
    "eval_return", "episode_return", "world_model_loss", "dynamics_loss", "reward_loss", "continue_loss", "actor_loss",
    "critic_loss", "entropy", "world_model_grad_norm", "actor_grad_norm", "critic_grad_norm", "critic_value_mean",
    "mean_imagined_return", "imagination_state_error", "imagination_obs_error", "imagination_reward_error",
    "imagination_continue_accuracy", "client_steps_per_s", "client_sources", "client_staleness_mean",
    "client_episode_return", "client_stale_dropped",
)


def thin(rows: list[dict], limit: int = MAX_POINTS) -> list[dict]:
    """At most `limit` rows, evenly spaced over the run, the first and the newest kept."""
    if len(rows) <= limit:
        return rows
    step = (len(rows) - 1) / (limit - 1)
    return [rows[round(i * step)] for i in range(limit)]


def training(run: RunDir | None, rows_reader: MetricRows) -> dict | None:
    """Curves (env_step plus each drawn key), phase boundaries, rates, and every failure mode's firings."""
    if run is None or not run.metrics_file.exists():
        return None
    rows = rows_reader.read(run)
    try:
        config = run.config()
    except (OSError, ValueError):
        config = {}
    shown = thin(rows)
    curves = {"env_step": [r["env_step"] for r in shown], **{key: [r.get(key) for r in shown] for key in CURVES}}
    fired: dict[str, list[int]] = {}
    for row in rows:
        for mode in row.get("failure_modes", []):
            fired.setdefault(mode, []).append(row["env_step"])
    rates = {}
    if len(rows) >= 2 and rows[-1]["wall_s"] > rows[-2]["wall_s"]:
        last, before = rows[-1], rows[-2]
        seconds = last["wall_s"] - before["wall_s"]
        rates = {"env_steps_per_s": (last["env_step"] - before["env_step"]) / seconds,
                 "updates_per_s": (last["updates"] - before["updates"]) / seconds}
    status = run.status() or {}
    return {
        "env_id": config.get("env_id"), "source": config.get("source", "env"), "rows": len(rows),
        "status": status or None, "curves": curves, **rates,
        "phases": status.get("phases", {}),  # the trainer's schedule, as it published it
        "failure_modes": [{"mode": mode, "rows": len(steps), "first_env_step": steps[0], "last_env_step": steps[-1]}
                          for mode, steps in fired.items()],
    }


def _quantile(buckets: list[tuple[float, float]], count: float, q: float) -> float | None:
    """A latency quantile from cumulative histogram buckets (upper bound, count), linear within a bucket."""
    if not count:
        return None
    rank, lower, below = q * count, 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower
            share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
            return lower + share * (upper - lower)
        lower, below = upper, cumulative
    return lower


def serving(store: ModelStore, metrics: ServiceMetrics, settings: ServiceSettings) -> dict:
    """Versions (served, newest and best exported), reloads and refusals, and per endpoint and transport
    the request and error counts and p50/p99 latency since start (the page turns counts into rates)."""
    runtime = store.current
    export_dir = store.models / "export" if (store.models / "export").is_dir() else store.models
    best = latest_bundle(store.models, "best")  # the newest while no export has an eval
    endpoints: dict[tuple[str, str], dict] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            labels = sample.labels
            if "endpoint" not in labels:
                continue
            entry = endpoints.setdefault((labels["transport"], labels["endpoint"]),
                                         {"transport": labels["transport"], "endpoint": labels["endpoint"],
                                          "requests": 0.0, "errors": 0.0, "buckets": []})
            if sample.name == "reverie_requests_total":
                entry["requests"] += sample.value
                if not str(labels["status"]).startswith("2") and labels["status"] != "OK":
                    entry["errors"] += sample.value
            elif sample.name == "reverie_request_seconds_bucket":
                entry["buckets"].append((float(labels["le"]), sample.value))
    table = []
    for entry in endpoints.values():
        buckets = sorted(entry.pop("buckets"))
        count = buckets[-1][1] if buckets else 0.0
        p50, p99 = _quantile(buckets, count, 0.5), _quantile(buckets, count, 0.99)
        table.append({**entry, "p50_ms": p50 and 1000 * p50, "p99_ms": p99 and 1000 * p99})
    return {
        "served_version": runtime.version if runtime else None,
        # What BEST's promotion rule judged it by: the served version's evaluation (None: not evaluated).
        "served_eval": evaluations(export_dir).get(str(runtime.version)) if runtime else None,
        "served_training_step": runtime.manifest.training_step if runtime else None,
        "newest_version": (versions(export_dir) or [None])[-1],
        "best_version": int(best.name.lstrip("v")) if best is not None and best.parent == export_dir else None,
        "reloads": store.reloads, "refusals": store.refusals,
        "endpoints": sorted(table, key=lambda e: (e["endpoint"], e["transport"])),
    }


def live(store: ModelStore, metrics: ServiceMetrics, settings: ServiceSettings, rows: MetricRows,
         sessions: int) -> dict:
    return {"time": time.time(), "training": training(RunDir.behind(settings.models), rows),
            "serving": serving(store, metrics, settings), "sessions": sessions}
