"""Clients' experience into the trainer: tail the experience log, put each episode's fragments
back in order, and hand the loop runs of consecutive transitions for the replay.

Many clients write into one log, so their episodes interleave; the replay stores one episode at a
time. The feed keeps each unfinished episode's steps aside and releases them as a run: when the
episode ends, every `client_run_steps` steps (so a long episode is learned from before it ends),
where a fragment is missing or comes out of order, and before a step older than `max_policy_lag`
model versions (dropped, not learned from). A run that stops before its episode's end is stored
as a truncation, so no sequence is ever joined across a gap.

The read position, the unfinished episodes and the released runs not yet in the replay are the
feed's state, saved in checkpoints beside the replay: a resumed trainer reads on from exactly
where the replay it restored stopped, so nothing is learned from twice or skipped.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from reverie.experience import Fragment, decode, open_reader

from .envs import SpaceInfo

log = logging.getLogger("reverie.trainer")

READ_RECORDS = 256  # records per read of the log
MAX_OPEN_EPISODES = 4096  # unfinished episodes kept; past that the longest-quiet one is released as cut


class Transition(NamedTuple):
    """One step for the replay, from the env (lag 0, source "env") or a client."""
    obs: np.ndarray
    action: np.ndarray
    reward: float
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    lag: int  # model versions between the one that chose the action and the trainer's newest when read
    source: str  # the session, stream or uploader it came from


@dataclass
class _Episode:
    next_index: int
    total: float = 0.0
    steps: list[Transition] = field(default_factory=list)
    evaluation: bool = False  # played by an evaluation session: deterministic, one model version
    versions: set[int] = field(default_factory=set)  # the model versions that chose its actions


class EvaluationEpisode(NamedTuple):
    """One finished evaluation episode: the version that played all of it, and its return."""

    version: int
    total: float


def unlearnable(fragment: Fragment, space: SpaceInfo) -> str | None:
    """Why this fragment cannot be learned from by an agent of `space`, or None. The server checked
    it against the model it served; this guards against a log written for another env."""
    obs = fragment.observations
    dtype = np.uint8 if space.is_image else np.float32
    if obs.shape[1:] != space.obs_shape or obs.dtype != dtype:
        return f"observations {obs.dtype.name} {list(obs.shape[1:])}, the agent sees {np.dtype(dtype).name} {list(space.obs_shape)}"
    if not space.is_image and not np.isfinite(obs).all():
        return "observations are not all finite"
    actions = fragment.actions
    if space.discrete:
        if actions.dtype != np.int64 or actions.ndim != 1 or actions.min() < 0 or actions.max() >= space.action_dim:
            return f"actions must be class indices below {space.action_dim}"
    elif (actions.dtype != np.float32 or actions.shape[1:] != (space.action_dim,) or not np.isfinite(actions).all()
          or np.abs(actions).max() > 1.0):
        return f"actions must be float32 [steps, {space.action_dim}] in [-1, 1]"
    if not np.isfinite(fragment.rewards).all():
        return "rewards are not all finite"
    return None


class ClientFeed:
    def __init__(self, log: str, space: SpaceInfo, run_steps: int, max_policy_lag: int | None):
        """`log`: a folder of segment files or a redis:// URL (`reverie.experience.open_reader`)."""
        self.space, self.run_steps, self.max_policy_lag = space, run_steps, max_policy_lag
        self.reader = open_reader(str(log))
        self.next_seq = 0  # the log position the next read starts at
        self.open: OrderedDict[str, _Episode] = OrderedDict()  # least recently extended first
        self.ready: deque[Transition] = deque()  # released runs, oldest first, not yet taken
        self.totals = {"steps": 0, "episodes": 0}  # learned from and ended, since the run began
        self.evaluations: list[EvaluationEpisode] = []  # finished evaluation episodes, not yet taken by the trainer
        self._window: dict = self._new_window()

    @staticmethod
    def _new_window() -> dict:
        return {"steps": 0, "returns": [], "versions": set(), "sources": set(), "lags": [], "stale_dropped": 0, "refused": 0,
                "skipped": 0, "since": time.perf_counter()}

    def poll(self, model_version: int) -> None:
        """Read what the log holds past the position (one read), releasing what it completes."""
        result = self.reader.read(self.next_seq, max_records=READ_RECORDS)
        for seq, _key, payload in result.records:
            self._take(seq, payload, model_version)
        if result.skipped:
            log.warning("experience log: %d records before position %d are gone (retention): skipped",
                        result.skipped, result.next_seq)
        self.next_seq = result.next_seq
        self._window["skipped"] += result.skipped

    def take(self) -> Transition | None:
        """The oldest released transition not yet taken."""
        if not self.ready:
            return None
        step = self.ready.popleft()
        self.totals["steps"] += 1
        self._window["steps"] += 1
        self._window["lags"].append(step.lag)
        self._window["sources"].add(step.source)
        return step

    def _take(self, seq: int, payload: bytes, model_version: int) -> None:
        try:
            fragment = decode(payload)
            why = unlearnable(fragment, self.space)
        except ValueError as error:
            why = str(error)
        if why is not None:
            log.warning("experience log record %d refused: %s", seq, why)
            self._window["refused"] += 1
            return
        episode = self.open.pop(fragment.episode, None)
        if episode is not None and fragment.index != episode.next_index:
            self._release(episode)  # a fragment missing or late: what came before is one run, this starts another
        if episode is None:
            episode = _Episode(fragment.index)
        self._extend(episode, fragment, model_version)
        if fragment.terminated or fragment.truncated:
            self._release(episode)
            self.totals["episodes"] += 1
            if not episode.evaluation:
                self._window["returns"].append(episode.total)
                self._window["versions"].update(episode.versions)
            elif len(episode.versions) == 1:  # (a server pins one version per evaluation episode)
                self.evaluations.append(EvaluationEpisode(next(iter(episode.versions)), episode.total))
            return
        self.open[fragment.episode] = episode
        while len(self.open) > MAX_OPEN_EPISODES:  # clients that went away mid-episode
            self._release(self.open.popitem(last=False)[1])

    def _extend(self, episode: _Episode, fragment: Fragment, model_version: int) -> None:
        obs, n = fragment.observations, fragment.steps
        episode.evaluation |= fragment.evaluation
        episode.versions.update(int(v) for v in fragment.model_versions)
        for t in range(n):
            lag = max(0, model_version - int(fragment.model_versions[t]))
            if self.max_policy_lag is not None and lag > self.max_policy_lag:
                self._release(episode)
                self._window["stale_dropped"] += 1
                continue
            last = t == n - 1
            episode.steps.append(Transition(obs[t], fragment.actions[t], float(fragment.rewards[t]), obs[t + 1],
                                            last and fragment.terminated, last and fragment.truncated, lag,
                                            fragment.source))
            if len(episode.steps) >= self.run_steps:
                self._release(episode)
        episode.total += float(fragment.rewards.sum())
        episode.next_index = fragment.index + 1

    def _release(self, episode: _Episode) -> None:
        """The episode's gathered steps become a run; one that stops before the episode's end is cut (truncated)."""
        if not episode.steps:
            return
        last = episode.steps[-1]
        if not (last.terminated or last.truncated):
            episode.steps[-1] = last._replace(truncated=True)
        self.ready.extend(episode.steps)
        episode.steps = []

    def pop_metrics(self) -> dict[str, float]:
        """The window since the last call: client steps learned from and their rate, the episodes that
        ended and their mean return, the distinct sessions/streams/uploaders, and staleness."""
        w, now = self._window, time.perf_counter()
        row = {"client_steps": self.totals["steps"], "client_steps_per_s": w["steps"] / max(now - w["since"], 1e-9),
               "client_episodes": self.totals["episodes"], "client_sources": len(w["sources"]),
               "client_log_position": self.next_seq, "client_stale_dropped": w["stale_dropped"],
               "client_refused": w["refused"], "client_skipped": w["skipped"]}
        if w["returns"]:  # exploring play (evaluation episodes are the trainer's eval_return rows)
            row["client_episode_return"] = float(np.mean(w["returns"]))
            row["client_episode_version"] = max(w["versions"])
        if w["lags"]:
            row["client_staleness_mean"] = float(np.mean(w["lags"]))
            row["client_staleness_max"] = int(np.max(w["lags"]))
        self._window = self._new_window()
        return row

    def take_evaluations(self) -> list[EvaluationEpisode]:
        """The evaluation episodes finished since the last call."""
        taken, self.evaluations = self.evaluations, []
        return taken

    def state_dict(self) -> dict:
        return {"next_seq": self.next_seq, "totals": dict(self.totals), "ready": [tuple(s) for s in self.ready],
                "evaluations": [tuple(e) for e in self.evaluations],
                "open": [(name, e.next_index, e.total, [tuple(s) for s in e.steps], e.evaluation, sorted(e.versions))
                         for name, e in self.open.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.next_seq, self.totals = state["next_seq"], dict(state["totals"])
        self.ready = deque(Transition(*s) for s in state["ready"])
        self.evaluations = [EvaluationEpisode(*e) for e in state.get("evaluations", [])]
        self.open = OrderedDict((name, _Episode(index, total, [Transition(*s) for s in steps], *extra[:1], set(*extra[1:])))
                                for name, index, total, steps, *extra in state["open"])
