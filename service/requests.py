"""What a request means, whichever front end it came by: REST (app.py) and gRPC (grpc_server.py) both
call these, so the checks, their order and their messages exist once.
"""

from __future__ import annotations

import numpy as np

from reverie.runs import read_status, run_dir_of

from . import inputs
from .inputs import InputError
from .runtime import Runtime
from .settings import ServiceSettings
from .store import ModelStore


def imagination_args(runtime: Runtime, settings: ServiceSettings, horizon: int | None, samples: int,
                     actions) -> tuple[int, int, np.ndarray | None]:
    """(horizon, samples, plan): the horizon defaults to the bundle's, or is the plan's length, and must
    agree with a plan when both are given; both stay within the bundle's max_horizon."""
    manifest = runtime.manifest
    inputs.check_range("samples", samples, 1, settings.max_samples)
    plan = None
    if actions is not None:
        plan = inputs.plan(actions, manifest.action_space)
        if horizon is not None and horizon != len(plan):
            raise InputError("horizon", f"disagrees with the plan: `actions` holds {len(plan)} steps")
        horizon = inputs.check_range("actions", len(plan), 1, manifest.max_horizon)
    horizon = inputs.check_range("horizon", horizon if horizon is not None else manifest.default_horizon,
                                 1, manifest.max_horizon)
    return horizon, samples, plan


def model_info(store: ModelStore, settings: ServiceSettings) -> dict:
    """GET /model and GetModel: the served bundle's manifest, its loading history, the run's progress."""
    runtime = store.require()
    return {
        "model_version": runtime.version,
        "bundle": str(runtime.bundle),
        "follow": settings.follow,
        "loaded_at": store.loaded_at,
        "reloads": store.reloads,
        "refused": [{"bundle": str(b), "reason": reason} for b, (_, reason) in store.refused.items()],
        "manifest": runtime.manifest.model_dump(),
        "training": read_status(run_dir_of(settings.models)),  # looked up each time: `up` starts before the run
    }
