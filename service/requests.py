"""What a request means, whichever front end it came by: REST (app.py) and gRPC (grpc_server.py) both
call these, so the checks, their order and their messages exist once.
"""

from __future__ import annotations

import numpy as np

from reverie.experience import Fragment
from reverie.runs import read_status, run_dir_of
from reverie.wire import from_tensor

from . import inputs
from .experience import ExperienceLog, NoExperience, check_rewards
from reverie.errors import InputError
from .runtime import HistoryInputs, Runtime
from .sessions import Session, Sessions
from .settings import ServiceSettings
from .store import ModelStore, NotReady


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


def tensor_observations(tensor, runtime: Runtime, max_batch: int, field: str = "obs") -> np.ndarray:
    """gRPC: one observation or a batch in a Tensor message, as a checked float32 batch."""
    if not tensor.dtype:
        raise InputError(field, "required")
    batch = inputs.check_observation_array(from_tensor(tensor, field), runtime.manifest.observation_space, field)
    inputs.check_batch_size(len(batch), field, max_batch)
    return batch


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


def request_memory(runtime: Runtime, sessions: Sessions, batched: bool, history: tuple | None, session_id: str | None,
                   reset: bool, acting: bool) -> tuple[HistoryInputs | None, Session | None]:
    """What the agent remembers for a request: the client's `history` (observations, actions), or its
    `session`'s steps (opened, or with `reset` restarted, when `acting`; only read otherwise), or nothing."""
    if reset and not session_id:
        raise InputError("reset", "starts a new episode in a `session`: give one")
    if history is not None and session_id:
        raise InputError("history", "give a `history` or a `session`, not both")
    if batched and (history is not None or session_id):
        raise InputError("observations", "a history or a session goes with one observation (`obs`), not a batch")
    if session_id:
        session = sessions.open(session_id, runtime, reset) if acting else sessions.peek(session_id)
        return sessions.history(session, runtime), session
    return (history_of(runtime, *history) if history is not None else None), None


def evaluation(session: Session | None, evaluate: bool, reset: bool, runtime: Runtime, store: ModelStore) -> Runtime:
    """The model that answers a request: an evaluation episode's own (pinned by `evaluate` with `reset`
    at its start, released at its end: the newest version, `store.evaluated()`), so its return is one
    version's; else `runtime`, the served one."""
    if evaluate:
        if session is None:
            raise InputError("evaluate", "an evaluation plays one episode in a `session` (or on an ActStream): give one")
        if not reset:
            raise InputError("evaluate", "starts an evaluation episode: send it with `reset: true`")
        session.pinned = store.evaluated()
    return session.pinned if session is not None and session.pinned is not None else runtime


def outcome(session: Session | None, reward: float | None, terminated: bool, truncated: bool, obs: np.ndarray,
            runtime: Runtime, settings: ServiceSettings, may_write, experience: ExperienceLog | None) -> Fragment | None:
    """The transition a request's reported outcome completes: the session's last step (observation,
    action, the version that chose it), the `reward` and end flags that followed, and `obs`, what
    followed. None when the request reports nothing. Checked before the request acts, so a refused
    report changes nothing. `may_write()` (the token check) is asked only of a report."""
    if reward is None:
        if terminated or truncated:
            raise InputError("terminated" if terminated else "truncated", "an episode's end comes with its last reward: send `reward`")
        return None
    if session is None:
        raise InputError("reward", "an outcome is reported in a `session` (or on an ActStream): give one")
    if experience is None:
        raise NoExperience()
    if not may_write():
        raise WriteDenied()
    check_rewards(np.asarray([reward]), settings, lambda _: "reward")
    with session.lock:
        last, episode, step = session.last, session.episode, session.step
    if last is None:
        raise NothingToComplete()
    previous, action, version = last
    space = runtime.manifest.observation_space
    return Fragment(episode=episode, index=step - 1, observations=np.stack([previous, obs[0].astype(space.dtype)]),
                    actions=action[None].astype(np.int64 if runtime.discrete else np.float32),
                    rewards=np.asarray([reward], np.float32), model_versions=np.asarray([version], np.int64),
                    terminated=terminated, truncated=truncated, source=session.source,
                    evaluation=session.pinned is not None)


def finish_step(session: Session, transition: Fragment | None, record) -> int:
    """After an answer: the session's step index. An episode's end (the transition says so) starts the
    session's next episode and records nothing; any other step is recorded (`record()`)."""
    if transition is not None and (transition.terminated or transition.truncated):
        step = session.step  # the episode's last observation
        session.reset()
        return step
    return record()


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
