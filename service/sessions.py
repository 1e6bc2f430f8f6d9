"""Server-side histories by session id: a client that sends `"session": "<id>"` need not send its history.

A session holds the last `history_length` steps of its client's current episode as raw observations
and agent actions, and the number of steps it has acted in that episode. The memory itself is
recomputed from those steps at every request (the graphs are stateless), so a session survives a
hot reload as it is: the new version reads the same steps.

Bounded and expiring: all sessions together stay within a byte budget (each counted at its
largest, a full history), the least recently used one leaves first when a new one would not fit,
and a session unused for `ttl_s` seconds is gone. A flood of new ids evicts old sessions; it
cannot grow memory. A client whose session went (`session_step` back at 0 mid-episode) loses its
context, not its answers.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from math import prod

import numpy as np
from cachetools import TTLCache

from reverie.history import Recent

from reverie.errors import InputError
from .runtime import HistoryInputs, Runtime

SESSION_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
OVERHEAD_BYTES = 1024  # a session's objects and its id, beside its arrays


def _episode_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Session:
    """One client's episode so far (a REST session, or a gRPC stream's own)."""

    recent: Recent
    nbytes: int = 0  # what it may hold at most: a full history, the last step, and its overhead
    step: int = 0  # steps acted in the current episode
    lock: threading.Lock = field(default_factory=threading.Lock)
    dtype: str = "float32"  # the model's observations: frames keep as uint8, a quarter of float32
    episode: str = field(default_factory=_episode_id)  # the current episode's id in the experience log
    # Who reports its outcomes, in the log: "session:<id>", or "stream:<id>" for one ActStream.
    source: str = field(default_factory=lambda: f"stream:{uuid.uuid4().hex[:12]}")
    # The last step acted (observation, agent action, model version): what a reported outcome completes.
    last: tuple[np.ndarray, np.ndarray, int] | None = None
    # An evaluation episode's model: the version that plays the whole episode, deterministically.
    pinned: Runtime | None = None

    def record(self, obs, action, version: int) -> int:
        """One acted step (its observation, agent action and the model version that chose it); returns
        the step's index in the episode."""
        with self.lock:
            obs = np.asarray(obs, self.dtype)
            self.recent.record(obs, action)
            self.last = (obs, np.asarray(action), version)
            self.step += 1
            return self.step - 1

    def reset(self) -> None:
        with self.lock:
            self.recent.clear()
            self.step = 0
            self.episode, self.last, self.pinned = _episode_id(), None, None


def check_session_id(session_id: str, field_name: str = "session") -> str:
    if not SESSION_ID.fullmatch(session_id):
        raise InputError(field_name, "1-128 characters of A-Z a-z 0-9 . _ -")
    return session_id


class Sessions:
    def __init__(self, budget_bytes: int, ttl_s: float, timer=time.monotonic):
        self.cache: TTLCache = TTLCache(maxsize=budget_bytes, ttl=ttl_s, timer=timer, getsizeof=lambda s: s.nbytes)
        self.lock = threading.Lock()

    @staticmethod
    def _size(runtime: Runtime) -> int:
        space = runtime.manifest.observation_space
        obs = np.dtype(space.dtype).itemsize * prod(space.shape)
        action = 8 if runtime.discrete else 4 * runtime.action_dim
        return OVERHEAD_BYTES + (runtime.history_length + 1) * (obs + action)

    def open(self, session_id: str, runtime: Runtime, reset: bool) -> Session:
        """The session `session_id`, new when unknown, expired, or `reset` (a new episode)."""
        check_session_id(session_id)
        with self.lock:
            session = None if reset else self.cache.get(session_id)
            if session is None:
                session = Session(Recent(runtime.history_length), self._size(runtime),
                                  dtype=runtime.manifest.observation_space.dtype, source=f"session:{session_id}")
                if session.nbytes > self.cache.maxsize:
                    raise InputError("session", "this server's session memory cannot hold one history of this model")
                self.cache[session_id] = session
            return session

    def peek(self, session_id: str) -> Session | None:
        """The session, if it is there; reading it neither creates nor refreshes it."""
        check_session_id(session_id)
        with self.lock:
            return self.cache.get(session_id)

    @staticmethod
    def history(session: Session | None, runtime: Runtime) -> HistoryInputs | None:
        """The session's steps as the runtime's graphs take them: the last history_length of them."""
        length = runtime.history_length
        if not length:
            return None
        if session is None:
            return runtime.history((), ())
        with session.lock:
            observations, actions = list(session.recent.observations), list(session.recent.actions)
        return runtime.history(observations[-length:], actions[-length:])

    def record(self, session_id: str, session: Session, obs, action, version: int) -> int:
        """`Session.record`; using a session restarts its expiry."""
        step = session.record(obs, action, version)
        with self.lock:
            self.cache[session_id] = session
        return step

    def __len__(self) -> int:
        with self.lock:
            self.cache.expire()
            return len(self.cache)

    @property
    def nbytes(self) -> int:
        with self.lock:
            return int(self.cache.currsize)
