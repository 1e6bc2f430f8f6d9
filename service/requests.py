"""A request's wire forms read for the call layer (observations from JSON or from a Tensor, a client's
history), and how each failure of a call reaches its client on either front end.
"""

from __future__ import annotations

import numpy as np

from reverie.errors import InputError

from . import inputs
from .experience import NoExperience
from .runtime import HistoryInputs, Runtime
from .store import NotReady


class NothingToComplete(InputError):
    """An outcome reported in a session whose episode has no step awaiting one: the request is well
    formed, the session's state refuses it (409; the client restarts the episode with `reset`)."""

    def __init__(self):
        super().__init__("session", "no action of this session's episode awaits an outcome (a new, reset or expired "
                                    "session): start the episode again with `reset`")


class WriteDenied(Exception):
    """Experience sent with a token that may act but not write it."""

    def __init__(self):
        super().__init__("this token may act but not write experience: send the experience token")


# How each failure of a request reaches its client, on each front end: (HTTP status, gRPC status).
FAILURES: dict[type[Exception], tuple[int, str]] = {  # the first that matches, in this order
    NothingToComplete: (409, "FAILED_PRECONDITION"),
    WriteDenied: (403, "PERMISSION_DENIED"),
    InputError: (422, "INVALID_ARGUMENT"),  # bad input (a body, a Tensor that does not decode); the message names the field
    NotReady: (503, "UNAVAILABLE"),  # no bundle loaded yet: try again shortly
    NoExperience: (404, "UNIMPLEMENTED"),  # experience sent to a server that keeps no log
}


def failure_status(err: Exception) -> tuple[int, str]:
    return next(status for kind, status in FAILURES.items() if isinstance(err, kind))


def json_observations(obs, observations, runtime: Runtime, max_batch: int) -> tuple[np.ndarray, bool]:
    """REST: (float32 batch, batched?) from whichever of `obs` (one) / `observations` (a batch) was given."""
    if (obs is None) == (observations is None):
        raise InputError("obs", "give exactly one of `obs` (one observation) or `observations` (a batch)")
    space = runtime.manifest.observation_space
    if obs is not None:
        return inputs.observation_batch(obs, space, "obs", batched=False), False
    inputs.check_batch_size(len(observations), "observations", max_batch)  # before the checks walk it
    return inputs.observation_batch(observations, space, "observations", batched=True), True


def history_of(runtime: Runtime, observations, actions, field: str = "history") -> HistoryInputs | None:
    """A client's history (observations as JSON lists or a decoded array [n, *obs], and the env action
    taken after each, oldest first) -> the graphs' history inputs. At most the bundle's history_length
    steps; the length is checked before anything walks the contents."""
    length, n = runtime.history_length, len(observations)
    if n > length:
        raise InputError(f"{field}.observations", f"at most {length} steps (the model's history_length), got {n}" if length
                         else "this model has no memory (history_length 0): send no history")
    if len(actions) != n:
        raise InputError(f"{field}.actions", f"expected {n} actions, one after each observation, got {len(actions)}")
    if not n:
        return runtime.history((), ())
    space, name = runtime.manifest.observation_space, f"{field}.observations"
    if isinstance(observations, np.ndarray):
        if observations.ndim != len(space.shape) + 1:
            raise InputError(name, f"expected shape [n, {', '.join(map(str, space.shape))}], got {list(observations.shape)}")
        obs = inputs.check_observation_array(observations, space, name)
    else:
        obs = inputs.observation_batch(list(observations), space, name, batched=True)
    return runtime.history(obs, inputs.plan(list(actions), runtime.manifest.action_space, f"{field}.actions"))
