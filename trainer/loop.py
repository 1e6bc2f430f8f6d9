"""The phased training loop: env or clients -> replay -> update -> metrics, evaluation, checkpoint, export.

The loop only orders the steps; each part is handed in or built from the config: what each step pays
for (`learner.Learner`), where the steps come from (`collect.Collector`), evaluations
(`evaluate.Evaluations`), exported versions (`release.Releases`), checkpoints (`checkpoint.Checkpoints`),
metric rows (`metrics.RunLog`), where a run starts (`resume.reconcile`). With `source=clients` the loop
waits while no step has arrived. In a data-parallel run (`distributed.Ranks`) rank 0's decisions and
transitions are shared, so every rank takes the same steps and updates in lockstep.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from reverie.bundle import versions
from reverie.runs import RunDir

from .checkpoint import Checkpoints, seed_everything
from .collect import Collector
from .config import Config
from .distributed import Ranks
from .evaluate import Evaluations
from .feed import ClientFeed, Transition
from .learner import Learner
from .metrics import RunLog
from .parts import Parts
from .release import Releases
from .resume import reconcile
from .schedule import Schedule

log = logging.getLogger("reverie.trainer")
IDLE_WAIT_S = 0.05  # source=clients: how long the loop waits for the log when it has nothing to learn from
STOP, END = "stop", "end"  # what the loop does next, besides a transition (None: wait for clients)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False,
                 export: bool = False, stop: threading.Event | None = None, given: frozenset[str] = frozenset(),
                 parts: Parts | None = None, publish: str | None = None, ranks: Ranks | None = None):
        """`given`: the keys the user set (preset, --set, flags); on a resume they change the saved
        configuration, logged, except the FIXED_ON_RESUME ones, which are refused. `parts`: built from
        the (resolved) config unless given. `export`: publish ONNX bundles to RUN_DIR/export every
        `export_every` steps, and to `publish` (s3://BUCKET/PREFIX) too. `ranks`: this process's place
        in a data-parallel run (distributed.py); None alone."""
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
        self.env, self.agent, self.replay = parts.env, parts.agent, parts.replay
        if not self.main:  # then each rank its own batches and imagination draws
            self.rng = seed_everything(cfg.seed + 1_000_003 * ranks.rank)
        self.agent.ranks = ranks
        self.space, self.device = self.agent.space, self.agent.device
        self.feed = None if cfg.source == "env" else ClientFeed(
            cfg.experience or str(self.run_dir.experience), self.space, cfg.client_run_steps, cfg.max_policy_lag)
        self.schedule = Schedule(cfg)
        self.collector = Collector(cfg, self.agent, self.schedule, self.rng, self.env, self.feed)
        self.learner = Learner(cfg, self.agent, self.replay, self.schedule, self.rng)
        self.export = export and self.main
        self.releases = Releases(self.run_dir.export, cfg.export_keep, publish if self.main else None)
        self.evaluations = Evaluations(self.agent, parts.eval_env, self.feed, self.releases)
        stateful = {"agent": self.agent, "world_model_optimizer": self.agent.world_model_optimizer,
                    "actor_optimizer": self.agent.actor_optimizer, "critic_optimizer": self.agent.critic_optimizer,
                    "replay": self.replay, **({"feed": self.feed} if self.feed else {})}  # its read position goes with the replay it filled
        self.checkpoints = Checkpoints(self.run_dir, stateful, self.rng, ranks, cfg.checkpoint_replay)
        self.env_step, self.stopped, self.wall_offset = 0, False, 0.0  # stopped: by `stop` (rank 0's)
        self.pace = {"idle_updates": 0, "client_steps_unpaid": 0}  # since the last row: see _behind
        if checkpoint is not None:
            self._restore(checkpoint)
        self.run_log = RunLog(cfg, self.run_dir, parts.writer, {"transition": self.schedule.warmup_end,
                                                                "full": self.schedule.transition_end}) if self.main else None

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Train to `total_steps`, or until `stop` is set or a KeyboardInterrupt arrives.

        Either stop saves a resumable checkpoint at the step reached."""
        cfg = self.cfg
        self.started = time.perf_counter()
        bar = tqdm(total=cfg.total_steps, initial=self.env_step, unit="step", dynamic_ncols=True, desc=cfg.env_id,
                   mininterval=1.0, disable=None if self.main else True)  # None: no bar when stderr is not a terminal
        if self.export and not versions(self.run_dir.export):
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
                evaluation = self.evaluations.due(self.env_step) if self.main else None
                if self.main and (evaluation is not None or self.env_step % cfg.log_every == 0):
                    self._log(evaluation)
                if self.env_step % cfg.checkpoint_every == 0:
                    self.save()
                if self.export and self.env_step % cfg.export_every == 0:
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
        if self.export and self.env_step % cfg.export_every != 0:
            self.publish_bundle()  # the final weights, with the eval that scored them

    def _order(self) -> Transition | str | None:
        """What the loop does next: a transition to add, STOP, END, or None (no client step: wait).
        Rank 0 decides, and in a data-parallel run every other rank does what it shares."""
        order = None
        if self.main:
            if self.stop.is_set():
                order = STOP
            elif self.env_step >= self.cfg.total_steps or self.evaluations.reached:
                order = END
            else:
                order = self.collector.next(self.env_step, self.releases.model_version, not self.replay.open)
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

    def _log(self, evaluation: dict[str, float] | None) -> None:
        row: dict = {"env_step": self.env_step, "phase": self.phase.value, "updates": self.updates,
                     "episodes": self.collector.episodes, "wall_s": round(self._elapsed(), 2),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),  # frames weigh
                     **self.learner.averager.pop()}
        if returns := self.collector.pop_returns():
            row["episode_return"] = float(np.mean(returns))
        if self.feed is not None:
            row.update(self.feed.pop_metrics(), **self.pace, client_backlog=len(self.feed.ready),
                       updates_per_step=self.updates / max(self.env_step, 1))
            self.pace = dict.fromkeys(self.pace, 0)
        if evaluation is not None:
            row.update(eval_return=self.last_eval, **evaluation)
        self.run_log.record(row, evaluation is not None, self.evaluations.fidelity)

    def publish_bundle(self) -> Path:
        # A client world's versions are evaluated after they are served (record_evaluation), not here.
        scored = self.last_eval if self.evaluations.eval_env is not None else None
        return self.releases.export(self.agent, self.env_step, self.phase.value, scored)

    # ------------------------------------------------------------------ state
    @property
    def phase(self):
        return self.schedule.phase(self.env_step)

    @property
    def updates(self) -> int:
        """Update rounds made so far."""
        return self.learner.updates

    @property
    def last_eval(self) -> float | None:
        return self.evaluations.last

    def _elapsed(self) -> float:
        return self.wall_offset + (time.perf_counter() - self.started if hasattr(self, "started") else 0.0)

    def save(self) -> Path | None:
        """A resumable checkpoint at this step (rank 0 writes it; other ranks return None)."""
        evals = self.evaluations
        position = {"env_step": self.env_step, "updates": self.learner.updates, "update_credit": self.learner.credit,
                    "episodes": self.collector.episodes, "last_eval": evals.last, "wall_s": self._elapsed(),
                    "client_evals": {str(v): r for v, r in evals.client_returns.items()}}
        return self.checkpoints.save(self.env_step, position, self.space.to_dict())

    def _restore(self, path: Path) -> None:
        pos = self.checkpoints.restore(path)
        self.agent.apply_rates()
        self.env_step, self.learner.updates, self.learner.credit = pos["env_step"], pos["updates"], pos["update_credit"]
        self.collector.episodes, self.evaluations.last, self.wall_offset = pos["episodes"], pos["last_eval"], pos["wall_s"]
        self.evaluations.client_returns = {int(v): r for v, r in pos.get("client_evals", {}).items()}
        self.replay.close_episode()  # the episode in progress at the stop cannot be continued: closed as truncated
        log.info("resumed from %s at env step %d (%s)", path.name, self.env_step, self.phase.value)
