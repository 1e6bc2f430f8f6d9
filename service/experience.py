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

import numpy as np

from reverie.experience import Fragment, encode, open_log
from reverie.experience.records import EPISODE
from reverie.wire import from_tensor

from . import inputs
from .batching import settle
from reverie.errors import InputError
from .runtime import Runtime
from .schemas import COUNT_MAX, FragmentBody
from .settings import ServiceSettings


def check_fragment(body: FragmentBody, runtime: Runtime, settings: ServiceSettings, field: str) -> Fragment:
    """REST: one uploaded fragment (a list of steps) -> a Fragment of checked arrays; InputError naming
    the first bad field."""
    steps = body.steps
    _check_steps(len(steps), settings, f"{field}.steps")
    space = runtime.manifest.observation_space
    observations = np.concatenate(
        [inputs.observation_batch(step.obs, space, f"{field}.steps[{i}].obs", batched=False) for i, step in enumerate(steps)]
        + [inputs.observation_batch(body.next_obs, space, f"{field}.next_obs", batched=False)])
    actions = np.stack([inputs.action(step.action, runtime.manifest.action_space, f"{field}.steps[{i}].action")
                        for i, step in enumerate(steps)])
    rewards = np.asarray([step.reward for step in steps], np.float64)
    check_rewards(rewards, settings, lambda i: f"{field}.steps[{i}].reward")
    return _fragment(body.episode, body.index, observations, actions, rewards,
                     np.asarray([step.model_version for step in steps], np.int64), body.terminated, body.truncated, runtime)


def check_tensor_fragment(message, runtime: Runtime, settings: ServiceSettings, field: str) -> Fragment:
    """gRPC: one Fragment message (tensors) -> a Fragment of checked arrays, with the same checks as REST's."""
    if not EPISODE.fullmatch(message.episode):
        raise InputError(f"{field}.episode", "1-128 characters of A-Z a-z 0-9 . _ : -")
    if message.index > COUNT_MAX:
        raise InputError(f"{field}.index", f"at most {COUNT_MAX}")
    for name in ("observations", "actions", "rewards"):
        if not getattr(message, name).dtype:
            raise InputError(f"{field}.{name}", "required")
    rewards = from_tensor(message.rewards, f"{field}.rewards").astype(np.float64)
    n = len(rewards) if rewards.ndim == 1 else 0
    _check_steps(n, settings, f"{field}.rewards")
    observations = inputs.check_observation_array(from_tensor(message.observations, f"{field}.observations"),
                                                  runtime.manifest.observation_space, f"{field}.observations")
    actions = from_tensor(message.actions, f"{field}.actions").tolist()
    versions = (from_tensor(message.model_versions, f"{field}.model_versions") if message.model_versions.dtype
                else np.full(n, -1))
    for name, array, count in (("observations", observations, n + 1), ("actions", actions, n), ("model_versions", versions, n)):
        if len(array) != count:
            raise InputError(f"{field}.{name}", f"expected {count} rows for {n} rewards, got {len(array)}")
    actions = inputs.plan(actions, runtime.manifest.action_space, f"{field}.actions")
    check_rewards(rewards, settings, lambda i: f"{field}.rewards[{i}]")
    if versions.dtype.kind != "i" or versions.ndim != 1 or (versions < -1).any():
        raise InputError(f"{field}.model_versions", "expected int64 model versions, or -1")
    return _fragment(message.episode, message.index, observations, actions, rewards, versions.astype(np.int64),
                     message.terminated, message.truncated, runtime)


def _check_steps(n: int, settings: ServiceSettings, field: str) -> None:
    if not 1 <= n <= settings.max_fragment_steps:
        raise InputError(field, f"a fragment holds 1 to {settings.max_fragment_steps} steps, got {n}")


def check_rewards(rewards: np.ndarray, settings: ServiceSettings, field) -> None:
    """Finite and within `reward_bound`, or InputError naming the first bad one (`field(i)`)."""
    bad = ~(np.abs(rewards) <= settings.reward_bound)  # NaN fails the comparison too
    if bad.any():
        raise InputError(field(int(np.argmax(bad))), f"expected a finite reward within ±{settings.reward_bound:g}")


def _fragment(episode: str, index: int, observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
              versions: np.ndarray, terminated: bool, truncated: bool, runtime: Runtime) -> Fragment:
    return Fragment(episode=episode, index=index, observations=observations.astype(runtime.manifest.observation_space.dtype),
                    actions=actions.astype(np.int64 if runtime.discrete else np.float32), rewards=rewards.astype(np.float32),
                    model_versions=versions, terminated=terminated, truncated=truncated, source="upload")


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

    async def store_async(self, fragments: list[Fragment]) -> list[tuple[int, bool]]:
        """`store` by the writer thread, for a coroutine: the event loop goes on serving meanwhile."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fragments, loop, future))
        return await future

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

