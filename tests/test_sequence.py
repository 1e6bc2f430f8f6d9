"""Diagram 4: sequence batches, their context and masks, and the transformer dynamics that uses them.

Real CartPole episodes in a real Replay, the real world model and agent; every comparison that
says "bit-identical" uses torch.equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import changed_groups, collect_replay, small_config, snapshot
from reverie.trainer.agent import Agent
from reverie.trainer.config import UpdateCounts
from reverie.trainer.losses import world_model_loss
from reverie.trainer.sequence import causal_mask, context_of
from reverie.trainer.world_model import WorldModel

WEIGHTS = {"dynamics": 1.0, "reward": 1.0, "continue": 1.0, "decoder": 1.0}
VARIANTS = [{"dynamics": "mlp"}, {"dynamics": "transformer"}, {"dynamics": "transformer", "dynamics_ensemble": 3},
            {"sequence_mode": True}, {"sequence_mode": True, "dynamics": "transformer"},
            {"sequence_mode": True, "memory": "none"}, {"sequence_mode": True, "memory": "none", "dynamics": "transformer"}]
IDS = ["mlp", "transformer", "transformer-ensemble", "memory-mlp", "memory-transformer", "seed-mlp", "seed-transformer"]


@pytest.fixture(scope="module")
def replay():
    """Random CartPole play: episodes of ~20 steps, so sequences of 12 often reach an end."""
    return collect_replay("CartPole-v1", 400, seed=1)


def world_model(replay_space, **fields) -> WorldModel:
    torch.manual_seed(0)
    wm = WorldModel(small_config(sequence_length=12, **fields), replay_space)
    with torch.no_grad():  # positions that differ, so that a wrong position would show
        for member in wm.dynamics.members:
            if hasattr(member, "position"):
                member.position.normal_(0.0, 0.5)
    return wm


def sequences(replay, batch_size: int = 8, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    return replay[0].sample_sequences(batch_size, length, np.random.default_rng(seed))


def test_a_sequences_frames_are_encoded_once_and_each_step_gets_its_own(replay):
    """`observe` encodes a sequence's T + 1 frames, not obs and next_obs apart: on every real step the
    states are those of the step's own observation and of its next one, runs cut by an episode's end
    (whose last observation is no later step's) included."""
    wm, batch = world_model(replay[1]), sequences(replay, batch_size=64)
    mask = batch["mask"]
    assert (~mask[:, -1]).sum() > 10  # many runs end early
    encoded = []
    wm.encode = lambda obs, encode=wm.encode: encoded.append(obs.shape) or encode(obs)  # noqa: E731
    states, next_states, _, _ = wm.observe(batch)
    assert encoded == [(64, 13, 4)]
    del wm.encode
    torch.testing.assert_close(states[mask], wm.encode(batch["obs"])[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(next_states[mask], wm.encode(batch["next_obs"])[mask], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fields", VARIANTS, ids=IDS)
def test_a_later_step_cannot_change_an_earlier_prediction(replay, fields):
    """The causal mask (and the memory): position t sees steps <= t only, so changing the observations
    from step 7 on leaves the predictions of steps 0-6 bit-identical (and does change step 7's, so the
    test can see a leak)."""
    wm = world_model(replay[1], **fields)
    batch = sequences(replay)
    batch["mask"][:] = True  # all real here: only the causal mask may separate the steps
    changed = {**batch, "obs": batch["obs"].clone()}
    changed["obs"][:, 7:] = torch.randn_like(changed["obs"][:, 7:]) * 3

    def predictions(b):
        _, _, beliefs, _ = wm.observe(b)
        actions = wm.encode_action(b["action"])
        return wm.dynamics.member_means(beliefs, actions, context_of(b, beliefs, actions))

    with torch.no_grad():
        before, after = predictions(batch), predictions(changed)
    assert torch.equal(before[:, :, :7], after[:, :, :7])
    assert not torch.equal(before[:, :, 7], after[:, :, 7])


@pytest.mark.parametrize("fields", VARIANTS, ids=IDS)
def test_length_one_sequences_give_the_flat_losses(replay, fields):
    """A sequence batch of T = 1 is a flat batch with a context: the same losses, to float precision."""
    wm = world_model(replay[1], **fields)
    batch = sequences(replay, batch_size=32, length=1)
    flat = {k: v[:, 0] for k, v in batch.items() if k != "mask"}
    seq, plain = world_model_loss(wm, batch, WEIGHTS, True).metrics, world_model_loss(wm, flat, WEIGHTS, True).metrics
    for key in ("dynamics_loss", "reward_loss", "continue_loss", "decoder_loss", "world_model_loss"):
        torch.testing.assert_close(seq[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("fields", VARIANTS, ids=IDS)
def test_padded_steps_count_for_nothing(replay, fields):
    """What lies past an episode's end may hold anything: the losses do not move."""
    wm = world_model(replay[1], **fields)
    batch = sequences(replay, batch_size=16)
    padded = ~batch["mask"]
    assert padded.any() and batch["mask"].any()
    noisy = {k: v.clone() for k, v in batch.items()}
    for key in ("obs", "next_obs"):
        noisy[key][padded] = torch.randn_like(noisy[key][padded]) * 5
    noisy["reward"][padded] = 100.0
    noisy["terminated"][padded] = 1.0 - noisy["terminated"][padded]
    a, b = world_model_loss(wm, batch, WEIGHTS, True).metrics, world_model_loss(wm, noisy, WEIGHTS, True).metrics
    for key in ("dynamics_loss", "reward_loss", "continue_loss", "decoder_loss"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_transformer_without_context_is_its_length_one_sequence(replay):
    """The single-step fallback (imagination, the exported graph) is the transformer on a sequence of one step."""
    wm = world_model(replay[1], dynamics="transformer", sequence_mode=True)
    batch = sequences(replay, batch_size=16, length=1)
    with torch.no_grad():
        _, _, beliefs, _ = wm.observe(batch)
        actions = wm.encode_action(batch["action"])
        in_context = wm.dynamics.member_means(beliefs, actions, context_of(batch, beliefs, actions))[:, :, 0]
        alone = wm.dynamics.member_means(beliefs[:, 0], actions[:, 0])
    torch.testing.assert_close(in_context, alone)


def test_the_causal_mask_is_lower_triangular():
    mask = causal_mask(4)[0]
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False],
                             [True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("fields", VARIANTS, ids=IDS)
def test_each_step_of_a_sequence_update_moves_its_own_group_only(replay, fields):
    """The isolation proof in sequence mode, for each dynamics: the world-model step moves the world
    model alone, and the actor and critic steps of a full update leave it where that step put it."""
    agent = Agent(small_config(**{"sequence_mode": True, "sequence_length": 12, **fields}), replay[1])
    batch = sequences(replay)
    agent.world_model.normalizer.update(batch["obs"][batch["mask"]])
    parameters = lambda changed, group: [n for n in changed[group] if not n.endswith("bounds")]  # noqa: E731 (the return bounds follow the rewards seen)
    before = snapshot(agent)
    agent.update(batch, UpdateCounts(world_model=1, actor=0, critic=0), critic_real_mix=0.0)
    changed = changed_groups(agent, before)
    assert changed["world_model"] and not parameters(changed, "policy") and not parameters(changed, "value")
    after_world_model = snapshot(agent)
    agent.update(batch, UpdateCounts(world_model=0, actor=1, critic=1), critic_real_mix=0.5)
    changed = changed_groups(agent, after_world_model)
    assert not changed["world_model"] and parameters(changed, "policy") and parameters(changed, "value")


def test_the_ensembles_disagreement_is_higher_off_the_data(replay):
    """After training on random CartPole play, five dynamics members agree on held-out states like the
    training ones and disagree more where the pole and cart are far beyond anything seen."""
    torch.manual_seed(0)
    wm = WorldModel(small_config(dynamics_ensemble=5), replay[1])
    rng = np.random.default_rng(0)
    wm.normalizer.update(torch.as_tensor(replay[0].observations()))
    optimizer = torch.optim.Adam(wm.parameters(), lr=3e-3)
    for _ in range(300):
        loss = world_model_loss(wm, replay[0].sample(64, rng), WEIGHTS, True).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    held_out = collect_replay("CartPole-v1", 200, seed=7)[0].sample(128, rng)
    far = held_out["obs"] * torch.tensor([1.0, 4.0, 6.0, 4.0])  # 6x the angles, 4x the velocities

    def disagreement(batch):
        return world_model_loss(wm, batch, WEIGHTS, True).metrics["dynamics_disagreement"].item()

    near_value, far_value = disagreement(held_out), disagreement({**held_out, "obs": far})
    assert far_value > 1.5 * near_value > 0, (near_value, far_value)


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
def test_the_memory_predicts_what_one_observation_cannot(replay):
    """CartPole without velocities: where the cart and pole go next depends on how they were moving,
    which only the steps before say. Trained alike on the same sequences, the world model with a
    memory predicts the next observation (decoded, env units) far better than the one without (its
    error was 0.30-0.63x the other's over training seeds 0-9; ~1x when the memory reads nothing)."""
    space = collect_replay("CartPole-v1", 10, obs_indices=[0, 2])[1]
    train = collect_replay("CartPole-v1", 2000, seed=2, obs_indices=[0, 2])[0]
    held_out = collect_replay("CartPole-v1", 600, seed=9, obs_indices=[0, 2])[0]
    errors = {}
    for memory in (False, True):
        torch.manual_seed(0)
        wm = WorldModel(small_config(sequence_mode=memory, sequence_length=8), space)
        wm.normalizer.update(torch.as_tensor(train.observations()))
        optimizer = torch.optim.Adam(wm.parameters(), lr=3e-3)
        rng = np.random.default_rng(0)
        for _ in range(800):
            loss = world_model_loss(wm, train.sample_sequences(16, 8, rng), WEIGHTS, True).total
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        batch = held_out.sample_sequences(256, 8, np.random.default_rng(1))
        with torch.no_grad():
            _, _, beliefs, _ = wm.observe(batch)
            predicted = wm.decode(wm.dynamics.member_means(beliefs, wm.encode_action(batch["action"])).mean(0))
        later = batch["mask"].clone()
        later[:, :3] = False  # steps with at least three before them
        errors[memory] = (predicted - batch["next_obs"])[later].abs().mean().item()
    assert errors[True] < 0.75 * errors[False], errors


def test_acting_reads_the_memory_of_the_last_history_length_steps(replay):
    """The trainer's episode window and the exported graphs' history give one belief: after k steps the
    window holds min(k, history_length) of them, and `belief_after` with them padded to full length
    (mask False on the pads) equals the belief the player acted on. A step older than the window is
    forgotten: changing it changes nothing."""
    from reverie.trainer.agent import Window

    torch.manual_seed(0)
    agent = Agent(small_config(sequence_mode=True, sequence_length=5), replay[1])
    wm, length = agent.world_model, agent.cfg.history_length
    assert length == 4
    rng = np.random.default_rng(0)
    obs, actions = rng.normal(0, 1, (12, 4)).astype(np.float32), rng.integers(0, 2, 12)
    window = Window(wm, length)

    def served(t: int) -> torch.Tensor:
        start = max(0, t - length)
        pad = length - (t - start)
        history_obs = torch.as_tensor(np.concatenate([obs[start:t], np.zeros((pad, 4), np.float32)]))[None]
        history_action = torch.as_tensor(np.concatenate([actions[start:t], np.zeros(pad, np.int64)]))[None]
        mask = (torch.arange(length) < t - start)[None]
        return wm.belief_after(torch.as_tensor(obs[t])[None], history_obs, history_action, mask)

    changed = Window(wm, length)  # the same episode but for its first observation
    with torch.no_grad():
        for t in range(len(obs)):
            assert len(window.states) == min(t, length)
            acted = wm.belief(wm.encode(torch.as_tensor(obs[t])[None]), window.memory())
            torch.testing.assert_close(served(t), acted, atol=1e-6, rtol=0)
            if 0 < t <= length:
                assert not torch.equal(changed.memory(), window.memory())
            elif t > length:
                assert torch.equal(changed.memory(), window.memory())  # step 0 has left the window
            agent.step(obs[t], window, deterministic=True, action=actions[t])
            agent.step(obs[t] + 5.0 * (t == 0), changed, deterministic=True, action=actions[t])


def test_only_a_transformer_trained_on_sequences_reads_its_rollouts_earlier_steps(replay):
    """A flat-trained transformer never saw a second position: it imagines one step at a time."""
    space = replay[1]
    assert WorldModel(small_config(dynamics="transformer", sequence_length=5), space).dynamics_context == 0
    assert WorldModel(small_config(dynamics="transformer", sequence_mode=True, sequence_length=5), space).dynamics_context == 4
    assert WorldModel(small_config(sequence_mode=True, sequence_length=5), space).dynamics_context == 0


def test_the_seeds_sequence_mode_has_no_memory_and_its_transformer_attends_over_states(replay):
    """memory=none: beliefs are the states themselves, acting reads no history, and the transformer
    still attends over the sequence context (a later step cannot change an earlier prediction is
    checked above for this variant; here: an earlier step does change a later one)."""
    cfg = small_config(sequence_mode=True, sequence_length=12, memory="none", dynamics="transformer")
    assert cfg.belief_dim == cfg.state_dim and cfg.history_length == 0
    wm = world_model(replay[1], sequence_mode=True, memory="none", dynamics="transformer")
    assert wm.memory is None and wm.dynamics_context == 11
    batch = sequences(replay)
    states, _, beliefs, _ = wm.observe(batch)
    assert torch.equal(states, beliefs)
    action = wm.encode_action(batch["action"])
    base = wm.dynamics.member_means(beliefs, action, context_of(batch, beliefs, action))
    changed = beliefs.clone()
    changed[:, 0] += 1.0
    moved = wm.dynamics.member_means(changed, action, context_of(batch, changed, action))
    assert not torch.allclose(base[..., 1:, :], moved[..., 1:, :])  # step 0 reaches the later steps' predictions
