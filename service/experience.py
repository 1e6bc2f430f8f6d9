"""Experience in: clients' episode fragments, checked against the served model's spaces and durable
in the experience log before the answer says so.

Every field is checked before anything is written, so a rejected upload stores nothing; a fragment
the log holds already (a retry) is acknowledged with the first copy's position, not stored twice.
Actions are kept in the agent's form (an index, or a Box action scaled to [-1, 1]), as the trainer's
replay holds them.
"""

from __future__ import annotations

import anyio
import numpy as np

from reverie.experience import Fragment, SegmentLog, encode

from . import inputs
from .inputs import InputError
from .runtime import Runtime
from .schemas import FragmentBody
from .settings import ServiceSettings


def check_fragment(body: FragmentBody, runtime: Runtime, settings: ServiceSettings, field: str) -> Fragment:
    """One uploaded fragment -> a Fragment of checked arrays; InputError naming the first bad field."""
    steps = body.steps
    if len(steps) > settings.max_fragment_steps:
        raise InputError(f"{field}.steps", f"a fragment holds at most {settings.max_fragment_steps} steps, got {len(steps)}")
    space = runtime.manifest.observation_space
    observations = np.concatenate(
        [inputs.observation_batch(step.obs, space, f"{field}.steps[{i}].obs", batched=False) for i, step in enumerate(steps)]
        + [inputs.observation_batch(body.next_obs, space, f"{field}.next_obs", batched=False)])
    actions = np.stack([inputs.action(step.action, runtime.manifest.action_space, f"{field}.steps[{i}].action")
                        for i, step in enumerate(steps)])
    for i, step in enumerate(steps):
        if not abs(step.reward) <= settings.reward_bound:  # NaN fails the comparison too
            raise InputError(f"{field}.steps[{i}].reward", f"expected a finite reward within ±{settings.reward_bound:g}")
    return Fragment(episode=body.episode, index=body.index, observations=observations.astype(space.dtype),
                    actions=actions.astype(np.int64 if runtime.discrete else np.float32),
                    rewards=np.asarray([step.reward for step in steps], np.float32),
                    model_versions=np.asarray([step.model_version for step in steps], np.int64),
                    terminated=body.terminated, truncated=body.truncated, source="upload")


class ExperienceLog:
    """The server's side of the log: appends in a worker thread (the event loop goes on serving while
    the disk syncs; concurrent uploads share one fsync) and counts what was stored."""

    def __init__(self, folder):
        self.log = SegmentLog(folder)

    async def store(self, fragments: list[Fragment]) -> list[tuple[int, bool]]:
        """(position, stored) of each fragment, once all are durable."""
        records = [(fragment.key, encode(fragment)) for fragment in fragments]
        return await anyio.to_thread.run_sync(self.log.append, records)

    def close(self) -> None:
        self.log.close()
