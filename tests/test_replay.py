"""Replay: the batch contract the agent relies on, episode bookkeeping, the ring, and checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import collect_replay, ending_every, fill
from reverie.trainer.replay import Replay

BATCH_KEYS = {"obs", "action", "reward", "next_obs", "terminated"}


def test_sample_shapes_and_dtypes_discrete_and_box():
    """Float32 tensors of the agent's shapes: scalar index actions for Discrete, vectors for Box."""
    rng = np.random.default_rng(0)
    discrete, _ = collect_replay("CartPole-v1", 50)
    batch = discrete.sample(8, rng)
    assert set(batch) == BATCH_KEYS
    assert batch["obs"].shape == batch["next_obs"].shape == (8, 4)
    assert batch["action"].shape == batch["reward"].shape == batch["terminated"].shape == (8,)
    assert all(t.dtype == torch.float32 for t in batch.values())
    assert set(batch["action"].tolist()) <= {0.0, 1.0}

    box, _ = collect_replay("Pendulum-v1", 50)
    batch = box.sample(8, rng)
    assert batch["obs"].shape == (8, 3) and batch["action"].shape == (8, 1)
    assert batch["action"].abs().max() <= 1.0
    assert all(t.dtype == torch.float32 for t in batch.values())


def test_sampled_transitions_are_stored_ones():
    """A sampled row's fields belong to the same stored step (obs, reward and next_obs stay aligned)."""
    replay = Replay(100, (4,), ())
    fill(replay, [(False, False)] * 20)
    batch = replay.sample(64, np.random.default_rng(1))
    k = batch["reward"]
    torch.testing.assert_close(batch["obs"][:, 0], k)
    torch.testing.assert_close(batch["next_obs"][:, 0], k + 1)
    torch.testing.assert_close(batch["action"], k % 2)


def test_endings_draws_extra_terminal_observations_and_their_replay_share():
    """1 ending in 50 steps: the uniform batch is untouched, and `endings` adds that many terminal next_obs
    (from the endings alone) with the replay's ending share, 2%."""
    replay = ending_every(50, 1000)
    plain, extra = replay.sample(64, np.random.default_rng(0)), replay.sample(64, np.random.default_rng(0), endings=16)
    for key in plain:
        assert torch.equal(plain[key], extra[key]), key  # the uniform part draws exactly as without endings
    assert extra["ending_next_obs"].shape == (16, 4)
    assert set((extra["ending_next_obs"][:, 0] - 1).tolist()) <= {float(k) for k in range(49, 1000, 50)}
    assert extra["ending_share"].item() == pytest.approx(0.02)
    assert set(ending_every(50, 40).sample(8, np.random.default_rng(0), endings=4)) == BATCH_KEYS  # none stored yet


def test_extra_endings_raise_the_share_to_the_floor_and_only_below_it():
    """`continue_endings` is a floor on the endings' share of the continue head's batch: 2% in the
    replay and a 10% floor need ceil(128 * 0.08 / 0.9) = 12 extra (12 + 2.56 of 140 is 10.4%);
    a replay already at or above the floor, or holding no ending, gets none."""
    replay = ending_every(50, 1000)
    assert replay.extra_endings(128, 0.10) == 12
    assert (12 + 128 * 0.02) / (128 + 12) >= 0.10 > (11 + 128 * 0.02) / (128 + 11)
    assert replay.extra_endings(128, 0.02) == 0 and replay.extra_endings(128, 0.0) == 0
    assert ending_every(50, 40).extra_endings(128, 0.10) == 0  # no ending stored yet


def test_endings_follow_the_ring_and_a_checkpoint():
    """An overwritten ending is no longer drawn as one; a restored replay knows its endings."""
    # Episodes of 4 steps take 5 slots (the last observation has its own): endings 3, 7, 11; 3's slots now hold 8-11.
    replay, rng = ending_every(4, 14, capacity=10), np.random.default_rng(0)
    steps = lambda r: set((r.sample(1, rng, endings=200)["ending_next_obs"][:, 0] - 1).tolist())  # noqa: E731
    assert steps(replay) == {7.0, 11.0}
    restored = Replay(10, (4,), ())
    restored.load_state_dict(replay.state_dict())
    assert steps(restored) == {7.0, 11.0}


def test_episode_ids_and_end_flags():
    """Episode ids advance after an end; truncation ends an episode without marking it terminated."""
    replay = Replay(100, (4,), ())
    fill(replay, [(False, False), (False, False), (True, False), (False, False), (False, True), (False, False)])
    steps = replay.steps()
    assert len(replay) == 6
    assert steps["episode"].tolist() == [0, 0, 0, 1, 1, 2]
    assert steps["episode_end"].tolist() == [False, False, True, False, True, False]
    assert steps["terminated"].tolist() == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert steps["next_obs"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert replay.episodes == 2


def test_close_episode_marks_the_cut_step_once():
    """A stop mid-episode closes it (so the next step starts a new id); closing twice changes nothing."""
    replay = Replay(100, (4,), ())
    fill(replay, [(False, False)] * 3)
    replay.close_episode()
    assert replay.steps()["episode_end"].tolist() == [False, False, True] and replay.episodes == 1
    replay.close_episode()
    assert replay.episodes == 1
    fill(replay, [(False, False)], start=3)
    assert replay.steps()["episode"].tolist() == [0, 0, 0, 1]
    assert replay.steps()["next_obs"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # the cut episode's last observation kept


def test_ring_overwrites_oldest_at_capacity():
    """Past capacity the oldest steps are replaced and only live steps can be sampled: 4 slots hold the
    last 3 transitions and the newest's next observation."""
    replay = Replay(4, (4,), ())
    fill(replay, [(False, False)] * 6)
    assert len(replay) == 3 and replay.cursor == 2
    assert replay.data["obs"][:, 0].tolist() == [4.0, 5.0, 6.0, 3.0]
    batch = replay.sample(200, np.random.default_rng(0))
    assert set(batch["reward"].tolist()) == {3.0, 4.0, 5.0}
    torch.testing.assert_close(batch["next_obs"][:, 0], batch["reward"] + 1)


def test_lazy_growth_keeps_earlier_steps():
    """Storage doubles on demand (1024 first); what was written before a growth must survive it."""
    replay = Replay(5000, (4,), ())
    fill(replay, [(False, False)] * 1500)
    assert replay._allocated < replay.capacity
    np.testing.assert_array_equal(replay.data["obs"][:1500, 0], np.arange(1500, dtype=np.float32))
    np.testing.assert_array_equal(replay.data["reward"][:1500], np.arange(1500, dtype=np.float32))


def assert_same(a: Replay, b: Replay) -> None:
    assert (a.size, a.cursor, a.filled, a.episodes, a.open) == (b.size, b.cursor, b.filled, b.episodes, b.open)
    for key in Replay.FIELDS:
        np.testing.assert_array_equal(a.data[key][: a.filled], b.data[key][: b.filled])
    for key, t in a.sample(32, np.random.default_rng(7)).items():
        assert torch.equal(t, b.sample(32, np.random.default_rng(7))[key])


def test_state_dict_round_trip():
    """A restored replay has the same contents, position and episode count, and samples identically."""
    replay = Replay(100, (4,), ())
    fill(replay, [(False, False), (True, False), (False, False), (False, False)])
    restored = Replay(100, (4,), ())
    restored.load_state_dict(replay.state_dict())
    assert_same(replay, restored)
    # Both continue identically after the restore.
    fill(replay, [(False, True)], start=4)
    fill(restored, [(False, True)], start=4)
    assert_same(replay, restored)


def test_state_dict_round_trip_after_wrap_and_empty():
    """The ring position survives a round trip once wrapped; an empty replay round-trips too."""
    replay = Replay(5, (4,), ())
    fill(replay, [(False, False)] * 7)
    restored = Replay(5, (4,), ())
    restored.load_state_dict(replay.state_dict())
    assert_same(replay, restored)
    fill(replay, [(False, False)], start=7)
    fill(restored, [(False, False)], start=7)
    assert_same(replay, restored)
    assert restored.data["obs"][2, 0] == 7.0

    empty = Replay(5, (4,), ())
    empty.load_state_dict(Replay(5, (4,), ()).state_dict())
    assert len(empty) == 0 and empty.cursor == 0


def test_state_dict_is_a_copy():
    """The saved state must not alias the live arrays (later adds would rewrite a checkpoint in memory)."""
    replay = Replay(3, (4,), ())
    fill(replay, [(False, False)] * 3)
    state = replay.state_dict()
    fill(replay, [(False, False)] * 3, start=100)  # the ring overwrites every stored step
    assert replay.data["obs"][:, 0].tolist() == [103.0, 101.0, 102.0]
    assert state["data"]["obs"][:, 0].tolist() == [3.0, 1.0, 2.0]


# ---------------------------------------------------------------------- sequences (diagram 4)

def expected_valid(k: int, ends: set[int], newest: int, length: int) -> int:
    """How many steps from global step k on belong to its episode and are stored: up to and including
    the first episode end at or after k, at most to the newest step, at most `length`."""
    n = 1
    while n < length and k + n - 1 not in ends and k + n <= newest:
        n += 1
    return n


@pytest.mark.parametrize("capacity", [500, 173])  # 173: the ring has wrapped, oldest steps overwritten
def test_sequences_stop_at_episode_ends_and_at_the_newest_step_and_the_mask_says_so(capacity):
    """Every masked-in step follows the step before it in the same episode; every run is as long as its
    episode and the stored stretch allow (none cut short); the padding repeats a valid step of the run."""
    rng = np.random.default_rng(3)
    steps, ends, k = [], set(), 0
    while k < 400:
        n = int(rng.integers(1, 30))
        terminated = rng.random() < 0.7  # else the episode is truncated
        for i in range(n):
            last = i == n - 1
            steps.append((last and terminated, last and not terminated))
            if last:
                ends.add(k)
            k += 1
    replay = Replay(capacity, (4,), ())
    fill(replay, steps)
    newest = len(steps) - 1
    batch = replay.sample_sequences(256, 12, np.random.default_rng(4))
    assert batch["obs"].shape == (256, 12, 4) and batch["mask"].shape == (256, 12) and batch["mask"].dtype == torch.bool
    step = batch["reward"].long()  # each stored step's reward is its global index
    for row, mask in zip(step.tolist(), batch["mask"].tolist()):
        n = sum(mask)
        assert mask == [True] * n + [False] * (12 - n)  # a prefix
        assert row[:n] == list(range(row[0], row[0] + n))  # consecutive stored steps
        assert n == expected_valid(row[0], ends, newest, 12)
        assert set(row[n:]) <= {row[n - 1]}
    torch.testing.assert_close(batch["obs"][..., 0], batch["reward"])  # fields stay aligned, padding too
    torch.testing.assert_close(batch["next_obs"][..., 0], batch["reward"] + 1)


def test_sequences_of_a_short_replay_stay_within_what_was_written():
    replay = Replay(1000, (4,), ())
    fill(replay, [(False, False)] * 5)
    batch = replay.sample_sequences(64, 8, np.random.default_rng(0))
    assert int(batch["reward"].max()) == 4
    assert (batch["mask"].sum(1) == 5 - batch["reward"][:, 0]).all()


@pytest.mark.parametrize("capacity", [400, 150])  # the newest steps in one stretch, and across the ring's wrap
def test_a_recent_share_of_each_batch_comes_from_the_newest_steps(capacity):
    """`recent=(0.5, 20)`: half of every batch is among the newest 20 steps (valid transitions only,
    rows still aligned), the other half spread over the whole replay; (0, _) is the uniform draw."""
    replay = ending_every(10, 200, capacity)
    batch = replay.sample(400, np.random.default_rng(3), recent=(0.5, 20))
    steps = batch["reward"]
    torch.testing.assert_close(batch["next_obs"][:, 0], steps + 1)
    newest = steps >= 180  # steps 180-199 are the newest 20 (one episode's last observation among their slots)
    assert newest.sum() >= 200 and newest[200:].all()
    assert (steps[:200] < 150).sum() > 100  # the uniform half reaches the old steps too
    uniform = replay.sample(64, np.random.default_rng(4))
    torch.testing.assert_close(replay.sample(64, np.random.default_rng(4), recent=(0.0, 20))["reward"], uniform["reward"])
    sequences = replay.sample_sequences(40, 4, np.random.default_rng(5), recent=(1.0, 20))
    assert (sequences["reward"][:, 0] >= 180).all()


def test_a_recent_window_wider_than_the_replay_draws_what_is_stored():
    """A large ring grows as it fills (a trainer's 1M-step replay holds 205 steps in a few slots): a window
    of 1,000 over 205 stored steps, mid-episode (the next observation's slot claimed past the cursor),
    draws only stored transitions."""
    replay = ending_every(10, 205, capacity=1_000_000)
    batch = replay.sample(1000, np.random.default_rng(6), recent=(1.0, 1000))
    steps = set(batch["reward"].tolist())
    assert steps <= set(map(float, range(205))) and len(steps) > 180
    torch.testing.assert_close(batch["next_obs"][:, 0], batch["reward"] + 1)
