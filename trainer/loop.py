"""The phased training loop: env or clients -> replay -> update -> metrics, evaluation, checkpoint, export.

What each step pays for is `learner.Learner`'s business, and where the steps come from
`collect.Collector`'s; with `source=clients` the loop waits while none has arrived. In a data-parallel run (`distributed.Ranks`) rank 0's decisions and
transitions are shared, so every rank takes the same steps and updates in lockstep.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from reverie.bundle import latest_bundle, record_evaluation, versions
from reverie.objectstore import Publisher, StoreError
from reverie.runs import RunDir

from .agent import Agent
from .checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint, seed_everything
from .collect import Collector
from .evaluate import evaluate
from .config import Config
from .distributed import Ranks
from .envs import make_env, space_info, world_space_info
from .feed import ClientFeed, Transition
from .learner import Learner
from .metrics import MetricsWriter, RunLog
from .replay import Replay, available_memory
from .resume import reconcile
from .schedule import Schedule

log = logging.getLogger("reverie.trainer")
IDLE_WAIT_S = 0.05  # source=clients: how long the loop waits for the log when it has nothing to learn from
STOP, END = "stop", "end"  # what the loop does next, besides a transition (None: wait for clients)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`device=auto` is CUDA when there is one (a data-parallel rank's own), else the CPU; asking for
    CUDA without one is an error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: this machine has no CUDA device; use device=auto or device=cpu")
    return torch.device(name)


@dataclass
class Parts:
    """What the loop drives: the envs it plays (none with source=clients) and evaluates in (none for a
    world given by its spaces: its clients evaluate), the agent, the replay, the metric writer. Built
    from the config by default; a caller may bring its own (another env, a prepared replay). A
    data-parallel rank other than 0 plays, evaluates and writes nothing: it gets no envs and no writer."""

    env: gym.Env | None
    eval_env: gym.Env | None
    agent: Agent
    replay: Replay
    writer: MetricsWriter | None

    @classmethod
    def build(cls, cfg: Config, run: RunDir, ranks: Ranks | None = None) -> "Parts":
        main = ranks is None or ranks.main
        eval_env = make_env(cfg.env_spec) if cfg.spaces is None else None
        space = space_info(eval_env) if eval_env is not None else world_space_info(cfg.spaces)
        obs_dtype = np.uint8 if space.is_image else np.float32
        replay = Replay(cfg.replay_capacity, space.obs_shape, () if space.discrete else (space.action_dim,), obs_dtype)
        replay.check_fits(available_memory())  # before anything is built
        agent = Agent(cfg, space).to(resolve_device(cfg.device, ranks.local_rank if ranks else 0))
        env = make_env(cfg.env_spec) if cfg.source != "clients" and main else None
        return cls(env, eval_env if main else None, agent, replay, MetricsWriter(run) if main else None)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False,
                 export: bool = False, stop: threading.Event | None = None, given: frozenset[str] = frozenset(),
                 parts: Parts | None = None, publish: str | None = None, ranks: Ranks | None = None):
        """`given`: the keys the user set (preset, --set, flags); on a resume they change the saved
        configuration, logged, except the FIXED_ON_RESUME ones, which are refused. `parts`: built from
        the (resolved) config unless given. `publish`: s3://BUCKET/PREFIX that every exported version is
        also uploaded to (checked now; a failed upload later is logged and finished by the next).
        `ranks`: this process's place in a data-parallel run (distributed.py); None alone."""
        # Set from a signal handler (`reverie train`): the loop finishes the step, export or eval
        # under way, then checkpoints and returns. A KeyboardInterrupt raised at whatever line is
        # running can land in a finalizer, where Python prints and drops it, and training goes on.
        self.stop = stop if stop is not None else threading.Event()
        self.run_dir = RunDir(run_dir)
        self.ranks, self.main = ranks, ranks is None or ranks.main
        if self.main:
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
            cfg, checkpoint = reconcile(self.run_dir, cfg, resume, given)
        if ranks is not None:
            cfg, checkpoint = ranks.share((cfg, checkpoint) if self.main else None)
        self.cfg = cfg

        torch.set_num_threads(cfg.threads)
        self.rng = seed_everything(cfg.seed)  # the same initial weights on every rank

        parts = parts or Parts.build(cfg, self.run_dir, ranks)
        self.env, self.eval_env, self.agent, self.replay, self.writer = (
            parts.env, parts.eval_env, parts.agent, parts.replay, parts.writer)
        if not self.main:  # then each rank its own batches and imagination draws
            self.rng = seed_everything(cfg.seed + 1_000_003 * ranks.rank)
        self.agent.ranks = ranks
        self.space, self.device = self.agent.space, self.agent.device
        # The checkpoint is these parts' own state_dicts, by name, plus the loop's position and RNGs.
        self.stateful = {"agent": self.agent, "world_model_optimizer": self.agent.world_model_optimizer,
                         "actor_optimizer": self.agent.actor_optimizer, "critic_optimizer": self.agent.critic_optimizer,
                         "replay": self.replay}
        self.feed = None
        if cfg.source != "env":
            self.feed = ClientFeed(cfg.experience or str(self.run_dir.experience), self.space,
                                   cfg.client_run_steps, cfg.max_policy_lag)
            self.stateful["feed"] = self.feed  # its read position goes with the replay it filled
        self.model_version = self._lag_reference()
        self.schedule = Schedule(cfg)
        self.collector = Collector(cfg, self.agent, self.schedule, self.rng, self.env, self.feed)
        self.learner = Learner(cfg, self.agent, self.replay, self.schedule, self.rng)
        self.export = export  # publish ONNX bundles to RUN_DIR/export every `export_every` steps
        self.publisher = Publisher(publish) if publish and self.main else None
        if self.publisher is not None:
            self.publisher.check()

        self.env_step = 0
        self.last_eval: float | None = None
        self.reached = False  # an evaluation reached target_return
        self.stopped = False  # `stop` ended the run (rank 0's, in a data-parallel run)
        self.pace = {"idle_updates": 0, "client_steps_unpaid": 0}  # since the last row: see _behind, _idle_update
        self.client_evals: dict[int, list[float]] = {}  # a client world's evaluation returns, by model version
        self.fidelity: dict | None = None  # the last evaluation's imagination fidelity, per imagined step
        self.wall_offset = 0.0
        if checkpoint is not None:
            self._restore(load_checkpoint(checkpoint))
            log.info("resumed from %s at env step %d (%s)", checkpoint.name, self.env_step, self.phase.value)
        self.run_log = RunLog(cfg, self.run_dir, self.writer, {"transition": self.schedule.warmup_end,
                                                               "full": self.schedule.transition_end}) if self.main else None

    @property
    def phase(self):
        return self.schedule.phase(self.env_step)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Train to `total_steps`, or until `stop` is set or a KeyboardInterrupt arrives.

        Either stop saves a resumable checkpoint at the step reached."""
        cfg = self.cfg
        self.started = time.perf_counter()
        bar = tqdm(total=cfg.total_steps, initial=self.env_step, unit="step", dynamic_ncols=True, desc=cfg.env_id,
                   mininterval=1.0, disable=None if self.main else True)  # None: no bar when stderr is not a terminal
        if self.export and self.main and not versions(self.run_dir.export):
            self.publish_bundle()  # something to serve from the first second (`reverie up`)
        try:
            while (order := self._order()) != END:
                if order == STOP:
                    self.stopped = True
                    log.info("stop requested at env step %d; saving a checkpoint", self.env_step)
                    self.save()
                    return
                if order is None:
                    if self.learner.idle(self.env_step):
                        self.pace["idle_updates"] += 1
                    else:
                        self.stop.wait(IDLE_WAIT_S)
                    continue
                self._add(order)
                if not self._behind():
                    self.learner.pay(self.env_step)
                evaluation = self._evaluation() if self.main else None
                if self.main and (evaluation is not None or self.env_step % cfg.log_every == 0):
                    self._log(evaluation)
                if self.env_step % cfg.checkpoint_every == 0:
                    self.save()
                if self.export and self.main and self.env_step % cfg.export_every == 0:
                    self.publish_bundle()
                bar.update(1)
                bar.set_postfix(phase=self.phase.value, eval=self.last_eval, updates=self.updates, refresh=False)
        except KeyboardInterrupt:
            log.info("interrupted at env step %d; saving a checkpoint", self.env_step)
            self.save()
            raise
        finally:
            bar.close()
            if self.run_log is not None:
                self.run_log.close()
        if self.env_step % cfg.checkpoint_every != 0:
            self.save()
        if self.export and self.main and self.env_step % cfg.export_every != 0:
            self.publish_bundle()  # the final weights, with the eval that scored them

    def _order(self) -> Transition | str | None:
        """What the loop does next: a transition to add, STOP, END, or None (no client step: wait).
        Rank 0 decides, and in a data-parallel run every other rank does what it shares."""
        order = None
        if self.main:
            if self.stop.is_set():
                order = STOP
            elif self.env_step >= self.cfg.total_steps or self.reached:
                order = END
            else:
                order = self.collector.next(self.env_step, self.model_version, not self.replay.open)
        return order if self.ranks is None else self.ranks.share(order)

    def _add(self, step: Transition) -> None:
        self.replay.add(step.obs, step.action, step.reward, step.next_obs, step.terminated, step.truncated)
        if not self.space.is_image:
            self.agent.world_model.normalizer.update(
                torch.as_tensor(np.array(step.next_obs, np.float32), device=self.device).unsqueeze(0))
        self.env_step += 1

    def _behind(self) -> bool:
        """Clients play faster than the trainer learns: more client steps are waiting than `client_backlog`."""
        behind = self.feed is not None and len(self.feed.ready) > self.cfg.client_backlog
        self.pace["client_steps_unpaid"] += behind
        return behind

    @property
    def updates(self) -> int:
        """Update rounds made so far."""
        return self.learner.updates

    def _evaluation(self) -> dict[str, float] | None:
        """The evaluation row this step made, or None: the env's every `eval_every` steps, else a client
        world's (`_client_evaluation`). One that reaches `target_return` ends the run."""
        if self.eval_env is None:
            evaluation = self._client_evaluation()
        elif self.env_step % self.cfg.eval_every == 0:
            result = evaluate(self.agent, self.eval_env, self.env_step)
            self.last_eval, evaluation = result.mean_return, result.row
            self.fidelity = result.fidelity if result.fidelity is not None else self.fidelity
        else:
            return None
        target = self.cfg.target_return
        if evaluation is not None and target is not None and self.last_eval >= target:
            log.info("eval return %.1f reached target_return %.1f at env step %d: stopping",
                     self.last_eval, target, self.env_step)
            self.reached = True
        return evaluation

    def _client_evaluation(self) -> dict[str, float] | None:
        """A world without an env: a version's evaluation is the mean return of its first
        `client_eval_episodes` evaluation-session episodes (deterministic, that version throughout).
        Returns the newest version completed by the episodes that finished since the last call, or None."""
        completed = None
        for version, total in self.feed.take_evaluations():
            returns = self.client_evals.setdefault(version, [])
            if len(returns) < self.cfg.client_eval_episodes:
                returns.append(total)
                if len(returns) == self.cfg.client_eval_episodes:
                    completed = version
                    record_evaluation(self.run_dir.export, version, float(np.mean(returns)), self.cfg.promotion_tolerance)
                    self._push()
                    self.model_version = self._lag_reference()
        if completed is None:
            return None
        self.last_eval = float(np.mean(self.client_evals[completed]))
        return {"eval_version": completed, "eval_episodes": len(self.client_evals[completed])}

    def _log(self, evaluation: dict[str, float] | None) -> None:
        evaluated = evaluation is not None
        elapsed = self.wall_offset + time.perf_counter() - self.started
        row: dict = {"env_step": self.env_step, "phase": self.phase.value, "updates": self.updates,
                     "episodes": self.collector.episodes, "wall_s": round(elapsed, 2),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # frames weigh
                     **self.learner.averager.pop()}
        if returns := self.collector.pop_returns():
            row["episode_return"] = float(np.mean(returns))
        if self.feed is not None:
            row.update(self.feed.pop_metrics(), **self.pace, client_backlog=len(self.feed.ready),
                       updates_per_step=self.updates / max(self.env_step, 1))
            self.pace = dict.fromkeys(self.pace, 0)
        if evaluated:
            row.update(eval_return=self.last_eval, **evaluation)
        self.run_log.record(row, evaluated, self.fidelity)

    def _lag_reference(self) -> int:
        """The version a client step's staleness is counted from: BEST when there is one (what a server
        following BEST acts with: its steps are never stale, even while newer exports wait to be
        promoted), else the newest exported."""
        best = latest_bundle(self.run_dir.export, "best")
        return int(best.name[1:]) if best is not None and best.name.startswith("v") else 0

    def publish_bundle(self) -> Path:
        from .export import export_bundle  # the ONNX exporter loads only when a run exports

        # A client world's versions are evaluated after they are served (record_evaluation), not here.
        path = export_bundle(self.agent, self.run_dir.export, self.env_step, self.phase.value,
                             self.last_eval if self.eval_env is not None else None, self.cfg.export_keep)
        self.model_version = self._lag_reference()
        self._push()
        return path

    def _push(self) -> None:
        """The export folder onto the object store (`publish`); a store that is away gets it next time."""
        if self.publisher is None:
            return
        try:
            self.publisher.push(self.run_dir.export)
        except StoreError as err:
            log.error("publishing to the object store failed, training goes on (the next export retries): %s", err)

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path | None:
        """A checkpoint (rank 0's parts, which every rank shares, and every rank's generators); the
        other ranks of a data-parallel run only hand over their generators and return None."""
        rngs = [rng_state(self.rng)] if self.ranks is None else self.ranks.collect(rng_state(self.rng))
        if not self.main:
            return None
        elapsed = self.wall_offset + (time.perf_counter() - self.started if hasattr(self, "started") else 0.0)
        state = {name: part.state_dict() for name, part in self.stateful.items()
                 if name != "replay" or self.cfg.checkpoint_replay}
        state.update(
            space=self.space.to_dict(),
            position={"env_step": self.env_step, "updates": self.learner.updates, "update_credit": self.learner.credit,
                      "episodes": self.collector.episodes, "last_eval": self.last_eval, "wall_s": elapsed,
                      "client_evals": {str(v): r for v, r in self.client_evals.items()}},
            rng=rngs[0], rank_rngs=rngs[1:],
        )
        return save_checkpoint(self.run_dir, self.env_step, state)

    def _restore(self, state: dict) -> None:
        for name, part in self.stateful.items():
            if state.get(name) is not None:  # a checkpoint without the replay (checkpoint_replay=false) resumes empty
                part.load_state_dict(state[name])
        self.agent.apply_rates()
        pos = state["position"]
        self.env_step, self.learner.updates, self.learner.credit = pos["env_step"], pos["updates"], pos["update_credit"]
        self.collector.episodes, self.last_eval, self.wall_offset = pos["episodes"], pos["last_eval"], pos["wall_s"]
        self.client_evals = {int(v): r for v, r in pos.get("client_evals", {}).items()}
        rank = 0 if self.ranks is None else self.ranks.rank
        rngs = [state["rng"], *state.get("rank_rngs", [])]
        if rank < len(rngs):
            restore_rng(rngs[rank], self.rng)
        else:  # resumed with more processes than saved: this rank goes on from its fresh seed
            log.warning("rank %d: the checkpoint holds %d ranks' generators; this rank draws afresh", rank, len(rngs))
        # The episode in progress at the stop cannot be continued: close it as truncated.
        self.replay.close_episode()

