"""Experience in: clients' episode fragments, checked against the served model's spaces and durable
in the experience log before the answer says so.

Every field is checked before anything is written, so a rejected upload stores nothing; a fragment
the log holds already (a retry) is acknowledged with the first copy's position, not stored twice.
Actions are kept in the agent's form (an index, or a Box action scaled to [-1, 1]), as the trainer's
replay holds them.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from reverie.experience import Fragment, encode, open_log
from reverie.experience.records import EPISODE

from . import inputs
from .batching import settle
from reverie.errors import InputError
from .runtime import Runtime
from .schemas import COUNT_MAX
from .settings import ServiceSettings


@dataclass
class UploadedFragment:
    """One uploaded fragment as a front end read it off its wire, nothing checked yet: `observations`
    (steps + 1 rows, each in a form `inputs.observation_batch` reads, or one decoded array), env
    actions, rewards and model versions per step. `name(part, row)` spells where a part (row None:
    the whole of it) came from on that wire, so that a refusal names the field the client sent."""

    episode: str
    index: int
    observations: Sequence | np.ndarray
    actions: Sequence
    rewards: Sequence[float] | np.ndarray
    model_versions: Sequence[int] | np.ndarray
    terminated: bool
    truncated: bool
    name: Callable[[str, int | None], str]


def check_fragment(upload: UploadedFragment, runtime: Runtime, settings: ServiceSettings) -> Fragment:
    """The one check of an uploaded fragment, whichever front end read it: every field against the
    served model's spaces and the settings -> a Fragment of checked arrays in the agent's form, or an
    InputError naming the first bad field as its wire spells it."""
    name = upload.name
    if not isinstance(upload.episode, str) or not EPISODE.fullmatch(upload.episode):
        raise InputError(name("episode", None), "1-128 characters of A-Z a-z 0-9 . _ : -")
    if not 0 <= upload.index <= COUNT_MAX:
        raise InputError(name("index", None), f"an integer in [0, {COUNT_MAX}]")
    rewards = np.asarray(upload.rewards, np.float64)
    n = len(rewards) if rewards.ndim == 1 else 0
    if not 1 <= n <= settings.max_fragment_steps:
        raise InputError(name("rewards", None), f"a fragment holds 1 to {settings.max_fragment_steps} steps, got {n}")
    for part, count in (("observations", n + 1), ("actions", n), ("model_versions", n)):
        if len(getattr(upload, part)) != count:
            raise InputError(name(part, None), f"expected {count} rows for {n} steps, got {len(getattr(upload, part))}")
    space, action_space = runtime.manifest.observation_space, runtime.manifest.action_space
    if isinstance(upload.observations, np.ndarray):
        observations = inputs.check_observation_array(upload.observations, space, name("observations", None))
    else:
        observations = np.concatenate([inputs.observation_batch(obs, space, name("observations", i), batched=False)
                                       for i, obs in enumerate(upload.observations)])
    actions = np.stack([inputs.action(a, action_space, name("actions", i)) for i, a in enumerate(upload.actions)])
    check_rewards(rewards, settings, lambda i: name("rewards", i))
    versions = np.asarray(upload.model_versions)
    if versions.dtype.kind not in "iu" or versions.ndim != 1:
        raise InputError(name("model_versions", None), "expected integer model versions, or -1")
    if (versions < -1).any():
        raise InputError(name("model_versions", int(np.argmax(versions < -1))), "expected a model version, or -1")
    return Fragment(episode=upload.episode, index=upload.index, observations=observations.astype(space.dtype),
                    actions=actions.astype(np.int64 if runtime.discrete else np.float32), rewards=rewards.astype(np.float32),
                    model_versions=versions.astype(np.int64), terminated=upload.terminated, truncated=upload.truncated,
                    source="upload")


def check_rewards(rewards: np.ndarray, settings: ServiceSettings, field) -> None:
    """Finite and within `reward_bound`, or InputError naming the first bad one (`field(i)`)."""
    bad = ~(np.abs(rewards) <= settings.reward_bound)  # NaN fails the comparison too
    if bad.any():
        raise InputError(field(int(np.argmax(bad))), _reward_message(settings))


def check_reward(reward: float, settings: ServiceSettings, field: str) -> None:
    """`check_rewards` for one reported reward, in plain Python (it runs on every reported step)."""
    if not abs(reward) <= settings.reward_bound:
        raise InputError(field, _reward_message(settings))


def _reward_message(settings: ServiceSettings) -> str:
    return f"expected a finite reward within ±{settings.reward_bound:g}"


class NoExperience(Exception):
    """This server was started without an experience log."""

    def __init__(self):
        super().__init__("this server keeps no experience log (start it with --experience DIR)")


class ExperienceLog:
    """The server's side of the log, shared by both front ends. gRPC's worker threads append directly
    (concurrent appends share one fsync); REST requests, on the event loop, queue theirs for one writer
    thread, which takes everything queued while it was writing as one group: one wake-up, one append
    (one fsync, or one Redis round trip) and one hand-back to the loop per group, not per request."""

    def __init__(self, spec: str):
        self.log = open_log(spec)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.groups = 0  # group appends the writer made (how well REST requests share them)
        self._writer = threading.Thread(target=self._write_groups, name="experience-writer", daemon=True)
        self._writer.start()

    def store(self, fragments: list[Fragment]) -> list[tuple[int, bool]]:
        """(position, stored) of each fragment, once all are durable."""
        return self.log.append([(fragment.key, encode(fragment)) for fragment in fragments])

    def store_async(self, fragments: list[Fragment]) -> asyncio.Future:
        """`store` by the writer thread, for the event loop: a future of its result, and the write under
        way at once, so that a caller may do other work (an act's graph call) before awaiting it."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fragments, loop, future))
        return future

    def _write_groups(self) -> None:
        while (first := self._queue.get()) is not None:
            group = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # close() comes after this group
                    break
                group.append(item)
            self.groups += 1
            try:
                results = self.store([f for fragments, _, _ in group for f in fragments])
                answers = []
                for fragments, _, _ in group:
                    answers.append(results[:len(fragments)])
                    results = results[len(fragments):]
            except Exception as error:  # each request gets the log's error as its own
                answers = [error] * len(group)
            for loop in {loop for _, loop, _ in group}:
                mine = [(future, answer) for (_, lp, future), answer in zip(group, answers) if lp is loop]
                try:
                    loop.call_soon_threadsafe(settle, mine)
                except RuntimeError:  # that loop is closed: its server stopped, nobody waits for these
                    pass

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self.log.close()

