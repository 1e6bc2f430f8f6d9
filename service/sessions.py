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

`SharedSessions` (`--sessions redis://...`) keeps them in Redis instead, so that any replica behind a
round-robin balancer can answer a session's next step and a replica that dies takes no session with
it: each step's session is written before its answer, expiring after `ttl_s` like the in-process
ones; Redis's own `maxmemory` (with an LRU policy) bounds them all.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from math import prod
from urllib.parse import urlsplit

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

    def save(self, session_id: str, session: Session) -> None:
        """A session after its step: kept (using it restarts its expiry)."""
        with self.lock:
            self.cache[session_id] = session

    def __len__(self) -> int:
        with self.lock:
            self.cache.expire()
            return len(self.cache)

    @property
    def nbytes(self) -> int:
        with self.lock:
            return int(self.cache.currsize)


class SharedSessions:
    """Sessions in Redis, shared by every replica (`--sessions redis://HOST:PORT[/DB]`): each is read at
    its step's start and written, with its expiry, before the answer. An evaluation episode's pinned
    model travels as its version number: a replica that has that version loaded plays on with it."""

    PREFIX = "reverie:session:"

    def __init__(self, url: str, ttl_s: float, store):
        import redis

        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"--sessions expects redis://HOST:PORT[/DB], got {url!r}")
        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.ttl_ms = int(ttl_s * 1000)
        self.store = store
        try:
            self.client.ping()
        except redis.RedisError as err:
            raise ValueError(f"--sessions {url}: {err}") from err

    def open(self, session_id: str, runtime: Runtime, reset: bool) -> Session:
        check_session_id(session_id)
        session = None if reset else self.peek(session_id)
        if session is None:
            session = Session(Recent(runtime.history_length), Sessions._size(runtime),
                              dtype=runtime.manifest.observation_space.dtype, source=f"session:{session_id}")
        return session

    def peek(self, session_id: str) -> Session | None:
        check_session_id(session_id)
        blob = self.client.get(self.PREFIX + session_id)
        return None if blob is None else self._decode(blob)

    history = staticmethod(Sessions.history)

    def save(self, session_id: str, session: Session) -> None:
        self.client.set(self.PREFIX + session_id, self._encode(session), px=self.ttl_ms)

    def __len__(self) -> int:
        return sum(1 for _ in self.client.scan_iter(match=self.PREFIX + "*", count=1000))

    nbytes = None  # the bytes are Redis's to count (INFO memory): this process holds none

    @staticmethod
    def _encode(session: Session) -> bytes:
        """The session as a length-prefixed JSON header and its arrays' raw bytes (no pickle; an .npz
        took milliseconds a step)."""
        with session.lock:
            arrays = {}
            if session.recent.observations:
                arrays.update(obs=np.stack(session.recent.observations), actions=np.stack(session.recent.actions))
            if session.last is not None:
                arrays.update(last_obs=np.asarray(session.last[0]), last_action=np.asarray(session.last[1]))
            header = {"step": session.step, "dtype": session.dtype, "episode": session.episode, "source": session.source,
                      "nbytes": session.nbytes, "length": session.recent.observations.maxlen,
                      "last_version": None if session.last is None else session.last[2],
                      "pinned": None if session.pinned is None else session.pinned.version,
                      "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
        head = json.dumps(header).encode()
        return len(head).to_bytes(4, "big") + head + b"".join(a.tobytes() for a in arrays.values())

    def _decode(self, blob: bytes) -> Session:
        size = int.from_bytes(blob[:4], "big")
        header, offset, arrays = json.loads(blob[4:4 + size]), 4 + size, {}
        for name, dtype, shape in header["arrays"]:
            arrays[name] = np.frombuffer(blob, dtype, offset=offset, count=prod(shape)).reshape(shape)
            offset += arrays[name].nbytes
        recent = Recent(header["length"])
        for obs, action in zip(arrays.get("obs", ()), arrays.get("actions", ())):
            recent.record(obs, action)
        last = None
        if header["last_version"] is not None:
            last = (arrays["last_obs"], arrays["last_action"], header["last_version"])
        pinned = None
        if header["pinned"] is not None:
            loaded = [r for r in (self.store.current, self.store.newest) if r is not None and r.version == header["pinned"]]
            pinned = loaded[0] if loaded else self.store.evaluated()
        return Session(recent, header["nbytes"], header["step"], dtype=header["dtype"], episode=header["episode"],
                       source=header["source"], last=last, pinned=pinned)
