"""The trainer learning from clients' experience: the feed that puts the log's fragments back into
runs of consecutive steps, `source=both`, and a trainer killed with -9 that resumes at its saved
read position and learns from every logged transition exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from builders import CARTPOLE, drain, small_config
from serving import fragment, write
from loopback import wait_until
from reverie.experience import Fragment
from reverie.runs import RunDir
from reverie.trainer.checkpoint import load_checkpoint
from reverie.trainer.config import Config
from reverie.trainer.feed import ClientFeed
from reverie.trainer.loop import Trainer

ROOT = Path(__file__).resolve().parent.parent


def runs(steps: list) -> list[list]:
    """The transitions split where the replay would start a new episode."""
    out, current = [], []
    for step in steps:
        current.append(step)
        if step.terminated or step.truncated:
            out.append(current)
            current = []
    assert not current, "a released run must end with an end flag"
    return out


def test_interleaved_episodes_come_out_whole_and_in_order(tmp_path):
    # Two clients' episodes interleave in the log, fragment by fragment.
    write(tmp_path, [fragment(0, 0, 3, 0), fragment(1, 0, 2, 0), fragment(0, 1, 3, 3),
                     fragment(1, 1, 2, 2, "truncated"), fragment(0, 2, 1, 6, "terminated")])
    feed = ClientFeed(tmp_path, CARTPOLE, run_steps=64, max_policy_lag=None)
    got = runs(drain(feed))
    assert [len(r) for r in got] == [4, 7]  # episode 1 ended first
    for run, episode in zip(got, (1, 0)):
        assert [s.obs[:2].tolist() for s in run] == [[1000 + episode, t] for t in range(len(run))]
        assert all(np.array_equal(a.next_obs, b.obs) for a, b in zip(run, run[1:]))  # consecutive
    assert got[0][-1].truncated and not got[0][-1].terminated
    assert got[1][-1].terminated and not any(s.terminated or s.truncated for s in got[1][:-1])
    metrics = feed.pop_metrics()
    assert metrics["client_episodes"] == 2 and metrics["client_episode_return"] == pytest.approx(5.5)
    assert metrics["client_steps"] == 11 and feed.next_seq == 5


def test_runs_are_cut_at_gaps_at_length_and_around_stale_steps(tmp_path):
    stale = fragment(1, 0, 3, 0, version=1)
    stale.model_versions[1] = 0  # chosen by version 0, more than one version behind version 2
    write(tmp_path, [fragment(0, 0, 3, 0), fragment(0, 2, 2, 10, "terminated"),  # fragment 1 never came
                     stale, fragment(1, 1, 5, 3, "terminated", version=2)])
    feed = ClientFeed(tmp_path, CARTPOLE, run_steps=4, max_policy_lag=1)
    got = runs(drain(feed, version=2))
    # Episode 0: the gap cuts after 3 steps (stored as truncated); the rest is a run of its own.
    # Episode 1: step 1 is dropped as stale; the 8 - 1 steps left are cut every 4 steps.
    assert [[s.obs[1] for s in r] for r in got] == [[0, 1, 2], [10, 11], [0], [2, 3, 4, 5], [6, 7]]
    assert [(r[-1].terminated, r[-1].truncated) for r in got] == [
        (False, True), (True, False), (False, True), (False, True), (True, False)]
    metrics = feed.pop_metrics()
    assert metrics["client_stale_dropped"] == 1 and metrics["client_staleness_max"] == 1


def test_a_fragment_for_another_env_is_refused_and_the_rest_learned(tmp_path):
    wrong = Fragment("ep-9", 0, np.zeros((3, 3), np.float32), np.zeros(2, np.int64), np.ones(2, np.float32),
                     np.ones(2, np.int64), True, False)
    outside = fragment(8, 0, 2, 0, "terminated")
    outside.actions[0] = 2  # CartPole has actions 0 and 1
    write(tmp_path, [wrong, outside, fragment(0, 0, 2, 0, "terminated")])
    feed = ClientFeed(tmp_path, CARTPOLE, run_steps=64, max_policy_lag=None)
    assert [s.obs[0] for s in drain(feed)] == [1000, 1000]
    assert feed.pop_metrics()["client_refused"] == 2 and feed.next_seq == 3


def test_the_saved_state_goes_on_exactly_where_it_stopped(tmp_path):
    fragments = [fragment(e, i, 3, 3 * i, "terminated" if i == 3 else "") for i in range(4) for e in range(3)]
    write(tmp_path / "a", fragments[:7])
    write(tmp_path / "b", fragments)
    whole = drain(ClientFeed(tmp_path / "b", CARTPOLE, 5, None))
    first = ClientFeed(tmp_path / "a", CARTPOLE, 5, None)  # saved with released steps untaken, and open episodes
    first.poll(1)
    taken = [first.take() for _ in range(3)]
    assert first.ready and first.open
    resumed = ClientFeed(tmp_path / "b", CARTPOLE, 5, None)  # the log went on meanwhile
    resumed.load_state_dict(first.state_dict())
    rest = drain(resumed)
    assert [s.obs.tolist() for s in taken + rest] == [s.obs.tolist() for s in whole]
    assert resumed.totals["steps"] == len(whole) == 36


def test_source_both_keeps_env_episodes_and_client_runs_apart(tmp_path):
    write(tmp_path / "log", [fragment(e, 0, 30, 0, "terminated") for e in range(4)])
    cfg = small_config(total_steps=300, source="both", experience=str(tmp_path / "log"), eval_every=10_000,
                       log_every=100, learning_starts=10_000)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    steps = trainer.replay.steps()
    client = steps["obs"][:, 0] >= 1000
    assert client.sum() == 120 and (~client).sum() == 180  # every client step, and the env's
    for episode in np.unique(steps["episode"]):
        mine = client[steps["episode"] == episode]
        assert mine.all() or not mine.any(), "an env episode and a client run were joined"
    assert RunDir(tmp_path / "run").metrics()[-1]["client_episodes"] == 4


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
@pytest.mark.timeout(120)
def test_a_trainer_killed_with_minus_9_resumes_at_its_read_position(tmp_path):
    """Nothing read twice, nothing skipped: after kill -9 and --resume the replay holds each logged
    transition once. The kill comes after the trainer read past its last checkpoint."""
    log, run = tmp_path / "log", tmp_path / "run"
    episodes = [[fragment(e, i, 10, 10 * i, "terminated" if i == 4 else "") for i in range(5)] for e in range(10)]
    write(log, [f for i in range(5) for e in range(6) for f in episodes[e][i:i + 1]])  # 300 steps, interleaved
    command = [sys.executable, "-m", "reverie.cli", "train", "--preset", "smoke", "--source", "clients",
               "--run-dir", str(run), "--steps", "500", "--set", f"experience={log}", "--set", "threads=1",
               "--set", "checkpoint_every=200", "--set", "log_every=50", "--set", "learning_starts=100000",
               "--set", "eval_every=100000", "--set", "export_every=100000"]
    trainer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not [r for r in RunDir(run).metrics() if r["env_step"] == 300] and time.monotonic() < deadline:
        time.sleep(0.2)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    saved = load_checkpoint(RunDir(run).latest_checkpoint())  # at 200 steps, with the log read to its end (30 records)
    assert saved["position"]["env_step"] == 200 and saved["feed"]["next_seq"] == 30 and len(saved["feed"]["ready"]) == 100
    write(log, [f for episode in episodes[6:] for f in episode])  # the clients went on meanwhile: 200 more
    resumed = Trainer(Config.model_validate(RunDir(run).config()), run, resume=True)
    assert resumed.env_step == 200  # `reverie train --resume` does this, in this process
    resumed.run()
    state = load_checkpoint(RunDir(run).latest_checkpoint())
    stored = state["replay"]["data"]
    learned = stored["obs"][stored["valid"]][:, :2]
    assert len(learned) == 500 == len({tuple(row) for row in learned.tolist()})  # each once
    assert {tuple(row) for row in learned.tolist()} == {(1000 + e, t) for e in range(10) for t in range(50)}
    assert state["feed"]["next_seq"] == 50 and state["feed"]["totals"]["steps"] == 500


def test_clients_ahead_of_the_trainer_are_stored_whole_without_their_updates(tmp_path):
    """600 client steps waiting at once, a backlog of 100: every step reaches the replay, and beyond the
    backlog each is stored without its update rounds (counted), so updates per step fall below the ratio."""
    write(tmp_path / "log", [fragment(e, 0, 30, 0, "terminated") for e in range(20)])
    cfg = small_config(total_steps=600, source="clients", experience=str(tmp_path / "log"), eval_every=10_000,
                       log_every=100, learning_starts=50, replay_ratio=1.0, client_backlog=100)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    rows = RunDir(tmp_path / "run").metrics()
    assert len(trainer.replay) >= 600 and rows[-1]["client_steps"] == 600
    unpaid = sum(r["client_steps_unpaid"] for r in rows)
    assert unpaid > 0 and trainer.updates == 600 - unpaid  # one round per paid step (all past learning_starts here)
    assert rows[-1]["updates_per_step"] < cfg.replay_ratio


def test_slow_clients_leave_the_trainer_updating_from_its_replay_up_to_the_cap(tmp_path):
    """120 client steps and then nothing: the trainer goes on with update rounds from its replay until
    it has done idle_replay_ratio per stored step, then waits; the rows say how many were idle."""
    write(tmp_path / "log", [fragment(e, 0, 30, 0, "terminated") for e in range(4)])
    cfg = small_config(total_steps=1000, source="clients", experience=str(tmp_path / "log"), eval_every=10_000,
                       log_every=20, learning_starts=20, replay_ratio=0.5, idle_replay_ratio=3.0)
    stop = threading.Event()
    trainer = Trainer(cfg, tmp_path / "run", stop=stop)
    worker = threading.Thread(target=trainer.run, daemon=True)
    worker.start()
    try:
        wait_until(lambda: trainer.updates >= 3.0 * 120, 100, "the idle updates to reach their cap")
        time.sleep(1.0)  # at the cap: no more
        assert trainer.env_step == 120 and trainer.updates == 360
        write(tmp_path / "log", [fragment(9, 0, 20, 0, "terminated")])  # a client comes back: its row tells
        wait_until(lambda: any(r["env_step"] == 140 for r in RunDir(tmp_path / "run").metrics()), 100, "the next row")
    finally:
        stop.set()
        worker.join(30)
    row = next(r for r in RunDir(tmp_path / "run").metrics() if r["env_step"] == 140)
    assert row["idle_updates"] >= 360 - 0.5 * 120 - 10 and row["updates"] <= 3.0 * 140


@pytest.mark.timeout(60)  # counted from the newest, every step is stale and the trainer waits for ever
def test_staleness_is_counted_from_best_so_a_server_following_it_never_starves_the_trainer(tmp_path):
    """BEST is v2 while v20 is the newest export: steps acted by v2 (what a server following BEST acts
    with) are learned from; steps of v1 are a version behind BEST, and with max_policy_lag=0 dropped."""
    export = tmp_path / "run" / "export"
    for version in range(1, 21):
        (export / f"v{version:06d}").mkdir(parents=True)
        (export / f"v{version:06d}" / "manifest.json").write_text("{}")
    (export / "LATEST").write_text("v000020")
    (export / "BEST").write_text("v000002")
    write(tmp_path / "log", [fragment(0, 0, 30, 0, "terminated", version=2), fragment(1, 0, 30, 0, "terminated", version=1)])
    cfg = small_config(total_steps=30, source="clients", experience=str(tmp_path / "log"), eval_every=10_000,
                       log_every=10, learning_starts=10_000, max_policy_lag=0)
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.run()
    assert trainer.env_step == 30 and set(trainer.replay.steps()["obs"][:, 0].tolist()) == {1000.0}  # episode 0's
    assert sum(r["client_stale_dropped"] for r in RunDir(tmp_path / "run").metrics()) == 30  # episode 1's, all of them
