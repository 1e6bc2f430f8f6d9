"""The losses of diagram 2 as pure functions: hand-computed returns and weights, gradient stops, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import ending_every, real_batch, small_config
from reverie.trainer.agent import to_floats
from reverie.trainer.envs import SpaceInfo
from reverie.trainer.losses import (actor_loss, continue_loss, critic_loss, discount_weights, lambda_return, replay_lambda_return,
                            world_model_loss)
from reverie.trainer.world_model import WorldModel


def test_lambda_return_matches_hand_computation_with_terminal_cut():
    """H=3 with a terminal (continue 0) at t=1: R_1 is its reward alone, and R_0 bootstraps from R_1, not beyond."""
    g, lam = 0.9, 0.5
    r = [1.0, 2.0, 3.0]
    c = [1.0, 0.0, 1.0]
    v = [10.0, 20.0, 30.0, 40.0]
    r2 = r[2] + g * c[2] * ((1 - lam) * v[3] + lam * v[3])  # R_H = V_H
    r1 = r[1] + g * c[1] * ((1 - lam) * v[2] + lam * r2)  # = r[1]: the terminal cuts the bootstrap
    r0 = r[0] + g * c[0] * ((1 - lam) * v[1] + lam * r1)
    assert r1 == r[1]
    out = lambda_return(torch.tensor([r]), torch.tensor([c]), torch.tensor([v]), g, lam)
    assert out.shape == (1, 3)
    torch.testing.assert_close(out, torch.tensor([[r0, r1, r2]]))
    # 1 + 0.9 * (0.5 * 20 + 0.5 * 2) = 10.9: nothing from v[2], v[3] or r[2] leaks past the terminal.
    assert out[0, 0].item() == pytest.approx(10.9)


def test_lambda_return_limits_td0_and_monte_carlo():
    """lambda=0 is the one-step TD target, lambda=1 the discounted sum plus the bootstrap at H, per batch row."""
    g = 0.5
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    continues = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    values = torch.tensor([[5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]])
    td0 = lambda_return(rewards, continues, values, g, 0.0)
    torch.testing.assert_close(td0, rewards + g * continues * values[:, 1:])
    mc = lambda_return(rewards, continues, values, g, 1.0)
    b = 1  # second row by hand: R_2 = 4 + .5*1*4 = 6; R_1 = -1 + .5*.5*6 = 0.5; R_0 = 0 + .5*1*0.5 = 0.25
    torch.testing.assert_close(mc[b], torch.tensor([0.25, 0.5, 6.0]))
    torch.testing.assert_close(mc[0], torch.tensor([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 8, 2 + 0.5 * 3 + 0.25 * 8,
                                                    3 + 0.5 * 8]))


def test_replay_lambda_return_stops_at_real_endings_and_bootstraps_at_the_cut():
    """Two replayed runs: one ends for real at step 1 (nothing of its value after it counts), one
    is cut after step 1 (its last real step bootstraps from its next value alone)."""
    g, lam = 0.9, 0.5
    rewards = torch.tensor([[1.0, 2.0, 7.0], [1.0, 2.0, 7.0]])
    terminated = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    next_values = torch.tensor([[10.0, 20.0, 99.0], [10.0, 20.0, 99.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    out = replay_lambda_return(rewards, terminated, next_values, mask, g, lam)
    # run 0: R1 = 2 (ended); R0 = 1 + g * ((1 - lam) * 10 + lam * 2)
    assert out[0, 1].item() == pytest.approx(2.0)
    assert out[0, 0].item() == pytest.approx(1 + g * (0.5 * 10 + 0.5 * 2))
    # run 1: R1 = 2 + g * 20 (cut: bootstrap); R0 = 1 + g * ((1 - lam) * 10 + lam * R1)
    assert out[1, 1].item() == pytest.approx(2 + g * 20)
    assert out[1, 0].item() == pytest.approx(1 + g * (0.5 * 10 + 0.5 * (2 + g * 20)))
    # a full-length run is the imagined lambda-return with continues 1 - terminated
    full = torch.ones_like(mask)
    values = torch.cat([torch.zeros(2, 1), next_values], 1)
    expected = lambda_return(rewards, 1.0 - terminated, values, g, lam)
    assert torch.allclose(replay_lambda_return(rewards, terminated, next_values, full, g, lam), expected)


def test_the_services_numpy_lambda_return_is_the_trainers():
    """reverie.returns (what /imagine reports) and trainer.losses (what the actor maximises) agree."""
    from reverie.returns import lambda_return as numpy_lambda_return

    g = torch.Generator().manual_seed(0)
    rewards, continues = torch.randn(5, 9, generator=g), torch.rand(5, 9, generator=g)
    values = torch.randn(5, 10, generator=g) * 10
    expected = lambda_return(rewards, continues, values, 0.97, 0.9).numpy()
    got = numpy_lambda_return(rewards.numpy(), continues.numpy(), values.numpy(), 0.97, 0.9)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_discount_weights_are_exclusive_continue_products():
    """w_t = prod_{k<t} c_k: step 0 always counts fully; a 0 continue zeroes every later step; no gradient."""
    c = torch.tensor([[0.9, 0.8, 0.7], [1.0, 0.0, 1.0]], requires_grad=True)
    w = discount_weights(c)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.9, 0.72], [1.0, 1.0, 0.0]]))
    assert not w.requires_grad


def test_critic_loss_never_sends_gradient_to_its_target():
    """MSE(V, R): the value prediction gets a gradient, the (imagined-return) target none."""
    prediction = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([2.0, 2.0, 5.0], requires_grad=True)
    weights = torch.tensor([1.0, 0.5, 0.25])
    loss = critic_loss(prediction, target, weights)
    assert loss.item() == pytest.approx((1 * 1 + 0.5 * 0 + 0.25 * 4) / 3)
    loss.backward()
    assert target.grad is None
    torch.testing.assert_close(prediction.grad, 2 * weights * (prediction - target).detach() / 3)
    assert critic_loss(prediction, target).item() == pytest.approx(5 / 3)


def test_actor_loss_maximises_weighted_returns_and_entropy():
    """Lower loss for higher returns and higher entropy; return_scale divides only the return term."""
    returns = torch.tensor([[2.0, 4.0]])
    entropy = torch.tensor([[1.0, 3.0]])
    weights = torch.tensor([[1.0, 0.5]])
    loss = actor_loss(returns, entropy, weights, entropy_coef=0.1, return_scale=2.0)
    assert loss.item() == pytest.approx(-(2 + 2) / 2 / 2 - 0.1 * (1 + 1.5) / 2)
    assert actor_loss(returns + 1, entropy, weights, 0.1, 2.0) < loss
    assert actor_loss(returns, entropy + 1, weights, 0.1, 2.0) < loss


WM_METRICS = {"dynamics_loss", "reward_loss", "continue_loss", "decoder_loss", "reward_mae", "continue_acc",
              "world_model_loss"}


def test_continue_loss_with_extra_endings_learns_the_replays_odds():
    """A one-logit continue head, fed 32 extra endings per 128 transitions where the replay holds 2% endings:
    with the shares it learns the replay's continue probability (0.98); without, the batch's (0.78)."""
    replay = ending_every(50, 2000)
    learned = {}
    for adjusted in (True, False):
        rng, logit = np.random.default_rng(0), torch.zeros((), requires_grad=True)
        optimizer = torch.optim.Adam([logit], lr=0.05)
        for _ in range(600):
            batch = replay.sample(128, rng, endings=32)
            terminated = torch.cat([batch["terminated"], torch.ones(32)])
            p = batch["ending_share"]
            shares = ((32 + 128 * p) / 160, p) if adjusted else ()
            loss = continue_loss(logit.expand(160), terminated, *shares)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        learned[adjusted] = torch.sigmoid(logit).item()
    assert learned[True] == pytest.approx(0.98, abs=0.006)
    assert learned[False] == pytest.approx(1 - (32 + 128 * 0.02) / 160, abs=0.02)


def test_world_model_loss_trains_the_continue_head_on_the_extra_endings():
    """world_model_loss takes the extra endings into the continue BCE (the loss changes) and nowhere else."""
    replay = ending_every(10, 200)
    wm = WorldModel(small_config(), SpaceInfo((4,), True, 2))
    with_endings = replay.sample(32, np.random.default_rng(0), endings=8)
    plain = {k: v for k, v in with_endings.items() if not k.startswith("ending")}
    weights = {"dynamics": 1.0, "reward": 1.0, "continue": 1.0, "decoder": 1.0}
    a, b = world_model_loss(wm, plain, weights, True).metrics, world_model_loss(wm, with_endings, weights, True).metrics
    assert a["continue_loss"] != b["continue_loss"]
    for key in ("dynamics_loss", "reward_loss", "decoder_loss"):
        assert a[key] == b[key], key
    # Unadjusted (continue_endings_adjusted=false): the plain BCE over the batch and its extra endings together.
    with torch.no_grad():
        logits = torch.cat([wm.continue_(wm.encode(with_endings["next_obs"])).logits,
                            wm.continue_(wm.encode(with_endings["ending_next_obs"])).logits])
        targets = torch.cat([1.0 - with_endings["terminated"], torch.zeros(8)])
        plain_bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    c = world_model_loss(wm, with_endings, weights, True, adjust_endings=False).metrics
    torch.testing.assert_close(c["continue_loss"], plain_bce)
    assert abs(float(c["continue_loss"] - b["continue_loss"])) > 1e-4  # the adjustment moved the loss


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_world_model_loss_reports_every_metric_and_weights_its_terms(env_id):
    """All seed metric names are present and finite, and the total is the weighted sum of the four terms."""
    batch, space = real_batch(env_id, batch_size=32)
    wm = WorldModel(small_config(), space)
    weights = {"dynamics": 0.5, "reward": 2.0, "continue": 3.0, "decoder": 0.25}
    out = world_model_loss(wm, batch, weights, symlog_rewards=True)
    assert WM_METRICS <= out.metrics.keys()
    m = to_floats(out.metrics)
    assert all(np.isfinite(v) for v in m.values())
    expected = 0.5 * m["dynamics_loss"] + 2.0 * m["reward_loss"] + 3.0 * m["continue_loss"] + 0.25 * m["decoder_loss"]
    assert m["world_model_loss"] == pytest.approx(expected, rel=1e-5)
    assert out.total.item() == pytest.approx(m["world_model_loss"])
    assert 0.0 <= m["continue_acc"] <= 1.0
    assert out.states.shape == out.next_states.shape == (32, small_config().state_dim)


def test_world_model_dynamics_target_is_stop_gradient():
    """The dynamics loss trains the prediction from s_t, never the encoded target s_{t+1} (anti-collapse)."""
    batch, space = real_batch("CartPole-v1", batch_size=32)
    wm = WorldModel(small_config(), space)
    only_dynamics = {"dynamics": 1.0, "reward": 0.0, "continue": 0.0, "decoder": 0.0}
    out = world_model_loss(wm, batch, only_dynamics, symlog_rewards=True)
    g_states, g_next = torch.autograd.grad(out.total, [out.states, out.next_states], allow_unused=True)
    assert g_states is not None and g_states.abs().sum() > 0
    assert g_next is None or torch.count_nonzero(g_next) == 0


def test_reward_mae_is_in_env_units():
    """With symlog rewards the MAE is still measured in env reward units (CartPole rewards are 1)."""
    batch, space = real_batch("CartPole-v1", batch_size=32)
    wm = WorldModel(small_config(), space)
    with torch.no_grad():  # make the reward head predict symlog(1) exactly: a zero last layer plus that bias
        wm.reward.net[-1].weight.zero_()
        wm.reward.net[-1].bias.fill_(torch.log1p(torch.tensor(1.0)).item())
    out = world_model_loss(wm, batch, {"dynamics": 1, "reward": 1, "continue": 1, "decoder": 1}, symlog_rewards=True)
    assert out.metrics["reward_mae"].item() == pytest.approx(0.0, abs=1e-5)
    assert out.metrics["reward_loss"].item() == pytest.approx(0.0, abs=1e-10)
