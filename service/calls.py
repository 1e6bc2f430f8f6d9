"""The calls Reverie answers, whichever transport brought them.

REST (app.py) and gRPC (grpc_server.py) only translate: their wire forms into the plain call types
here, and the answers back. `Calls` owns everything in between, in one order for both:

    model -> inputs -> memory -> outcome -> graph call (coalesced), durable store -> session step -> answer

so a check, its place in the order and its message exist once. Each call comes in two spellings
that differ only in how they wait: a coroutine for the REST event loop (`act`, `upload`) and a
blocking one for gRPC's worker threads (`act_blocking`, `upload_blocking`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from reverie.errors import InputError
from reverie.experience import Fragment
from reverie.runs import RunDir

from . import inputs
from .batching import ActBatcher
from .experience import ExperienceLog, NoExperience, UploadedFragment, check_fragment, check_reward
from .requests import NothingToComplete, WriteDenied, history_of
from .runtime import ACT_DETAILS, ActResult, HistoryInputs, Imagination, Runtime
from .sessions import Session, Sessions
from .settings import ServiceSettings
from .store import ModelStore

# A transport's observations, checked against the model that answers: (runtime, max_batch) ->
# (float32 batch, batched?). "Batched" is the request's form (REST's `observations`, a gRPC batch of
# several), which decides the answer's form and refuses memory.
Observations = Callable[[Runtime, int], "tuple[np.ndarray, bool]"]


@dataclass(slots=True)
class ActCall:
    observations: Observations
    history: tuple | None = None  # (observations, env actions), oldest first
    session: str | None = None
    reset: bool = False
    reward: float | None = None  # the outcome of the session's last step, reported with this step
    terminated: bool = False
    truncated: bool = False
    evaluate: bool = False
    deterministic: bool = False
    seed: int | None = None
    authorization: str | None = None  # the credentials it came with, needed where it reports an outcome (a write)


@dataclass(frozen=True)
class ActAnswer:
    result: ActResult
    model_version: int
    batched: bool
    discrete: bool
    session_step: int | None = None

    def details(self) -> dict[str, np.ndarray]:
        """The result's details that are present (`ACT_DETAILS`), by name: one row per observation."""
        return {k: v for k in ACT_DETAILS if (v := getattr(self.result, k)) is not None}


@dataclass(frozen=True)
class ValueCall:
    observations: Observations
    history: tuple | None = None
    session: str | None = None


@dataclass(frozen=True)
class ValueAnswer:
    values: np.ndarray
    model_version: int
    batched: bool


@dataclass(frozen=True)
class ImagineCall:
    observation: Callable[[Runtime], np.ndarray]  # one observation, checked, as a batch of one
    horizon: int | None = None
    samples: int = 1
    deterministic: bool = False
    seed: int | None = None
    actions: list | None = None  # a plan of env actions instead of the policy
    history: tuple | None = None
    session: str | None = None
    frames: bool = False  # the answer will be animated: only an image model's imagination can be


@dataclass(frozen=True)
class ImagineAnswer:
    imagination: Imagination
    runtime: Runtime  # what imagined it (its manifest draws the preview)


@dataclass
class _Act:
    """An act call between its checks and its graph call."""

    runtime: Runtime
    obs: np.ndarray
    batched: bool
    history: HistoryInputs | None
    session: Session | None
    transition: Fragment | None
    deterministic: bool


class Calls:
    """The process's one call layer: built once by the server over its store, sessions, experience log
    and batcher, and handed to both front ends."""

    def __init__(self, store: ModelStore, settings: ServiceSettings, sessions: Sessions, batcher: ActBatcher,
                 experience: ExperienceLog | None):
        self.store, self.settings, self.sessions = store, settings, sessions
        self.batcher, self.experience = batcher, experience

    # ------------------------------------------------------------------ act
    async def act(self, call: ActCall, stream: Session | None = None) -> ActAnswer:
        act = self._begin_act(call, stream)
        # The reported outcome is written while the graph runs: it completes the session's last step,
        # whatever this act answers (a retry of a failed act stores it once: the log keys it).
        writing = None if act.transition is None else self.experience.store_async([act.transition])
        try:
            result = await self.batcher.act(act.runtime, act.obs, act.deterministic, call.seed, act.history)
        finally:
            if writing is not None:
                await writing  # durable before the answer
        return self._end_act(act, result, call, stream)

    def act_blocking(self, call: ActCall, stream: Session | None = None) -> ActAnswer:
        act = self._begin_act(call, stream)
        result = self.batcher.act_blocking(act.runtime, act.obs, act.deterministic, call.seed, act.history)
        if act.transition is not None:
            self.experience.store([act.transition])  # durable before the answer
        return self._end_act(act, result, call, stream)

    def _begin_act(self, call: ActCall, stream: Session | None) -> _Act:
        """Model, inputs, memory, outcome: every check, before anything acts or is written. `stream` is
        a gRPC ActStream's own episode, the memory it keeps in place of a session."""
        runtime = self.store.require()
        obs, batched = call.observations(runtime, self.settings.max_batch)
        if stream is None:
            history, session = request_memory(runtime, self.sessions, batched, call.history, call.session, call.reset,
                                              acting=True)
        else:
            history, session = self._stream_memory(call, stream, runtime, batched)
        single = session if len(obs) == 1 else None  # (a batch only ever has one on a stream without memory)
        transition = outcome(single, call.reward, call.terminated, call.truncated, obs, runtime, self.settings,
                             lambda: self.settings.writer_accepts(call.authorization), self.experience)
        runtime = evaluation(single, call.evaluate, call.reset, runtime, self.store)
        deterministic = call.deterministic or (session is not None and session.pinned is not None)
        return _Act(runtime, obs, batched, history, session, transition, deterministic)

    @staticmethod
    def _stream_memory(call: ActCall, stream: Session, runtime: Runtime, batched: bool) -> tuple[HistoryInputs | None, Session]:
        if call.history is not None or call.session:
            raise InputError("history" if call.history is not None else "session",
                             "an ActStream keeps its own history: send `reset` at an episode's start")
        if runtime.history_length and batched:
            raise InputError("obs", "an ActStream with memory takes one observation per message")
        if call.reset:
            stream.reset()
        return Sessions.history(stream, runtime), stream

    def _end_act(self, act: _Act, result: ActResult, call: ActCall, stream: Session | None) -> ActAnswer:
        """The session step (after the store: an acknowledged step is a durable one), and the answer."""
        step = None
        if act.session is not None and len(act.obs) == 1:
            done = (act.obs[0], result.agent_actions[0], act.runtime.version)
            step = finish_step(act.session, act.transition, lambda: act.session.record(*done))
            if act.session is not stream:
                self.sessions.save(call.session, act.session)  # before the answer: any replica may take the next step
        return ActAnswer(result, act.runtime.version, act.batched, act.runtime.discrete, step)

    # ------------------------------------------------------------------ value, imagine
    def value(self, call: ValueCall) -> ValueAnswer:
        runtime = self.store.require()
        obs, batched = call.observations(runtime, self.settings.max_batch)
        history, _ = request_memory(runtime, self.sessions, batched, call.history, call.session, False, acting=False)
        return ValueAnswer(runtime.value(obs, history), runtime.version, batched)

    def imagine(self, call: ImagineCall) -> ImagineAnswer:
        runtime = self.store.require()
        horizon, samples, plan = imagination_args(runtime, self.settings, call.horizon, call.samples, call.actions)
        if call.frames and len(runtime.manifest.observation_space.shape) != 3:
            raise InputError("format", "gif animates an image model's imagined frames; this model's preview is png")
        obs = call.observation(runtime)
        history, _ = request_memory(runtime, self.sessions, False, call.history, call.session, False, acting=False)
        return ImagineAnswer(runtime.imagine(obs, horizon, samples, call.deterministic, call.seed, plan, history), runtime)

    # ------------------------------------------------------------------ experience, status
    async def upload(self, uploads: Iterable[UploadedFragment]) -> list[tuple[Fragment, int, bool]]:
        """(fragment, position, stored) of each uploaded fragment, all checked before any is stored,
        all durable when this returns."""
        checked = self._fragments(uploads)
        return [(f, seq, stored) for f, (seq, stored) in zip(checked, await self.experience.store_async(checked))]

    def upload_blocking(self, uploads: Iterable[UploadedFragment]) -> list[tuple[Fragment, int, bool]]:
        checked = self._fragments(uploads)
        return [(f, seq, stored) for f, (seq, stored) in zip(checked, self.experience.store(checked))]

    def _fragments(self, uploads: Iterable[UploadedFragment]) -> list[Fragment]:
        """Each upload checked as it comes (a gRPC stream's are read one by one) against one runtime."""
        if self.experience is None:
            raise NoExperience()
        runtime, checked = self.store.require(), []
        for i, upload in enumerate(uploads):
            if i == self.settings.max_batch:
                raise InputError("fragments", f"at most {self.settings.max_batch} fragments per call")
            checked.append(check_fragment(upload, runtime, self.settings))
        if not checked:
            raise InputError("fragments", "send at least one fragment")
        return checked

    def model(self) -> dict:
        return model_info(self.store, self.settings)


# ---------------------------------------------------------------------- the steps, in the order Calls takes them
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
    check_reward(reward, settings, "reward")
    with session.lock:
        last, episode, step = session.last, session.episode, session.step
    if last is None:
        raise NothingToComplete()
    previous, action, version = last
    observations = np.empty((2, *previous.shape), runtime.manifest.observation_space.dtype)
    observations[0], observations[1] = previous, obs[0]  # (a tenth of np.stack's cost, on every reported step)
    return Fragment(episode=episode, index=step - 1, observations=observations,
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
        "training": (run := RunDir.behind(settings.models)) and run.status(),  # looked up each time: `up` starts before the run
    }
