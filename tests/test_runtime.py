"""The serving runtime (onnxruntime + numpy) against the torch agent it was exported from."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch

from prometheus_client import CollectorRegistry, Histogram

from loopback import wait_until
from reverie.bundle import BundleError, latest_bundle, load_manifest, sha256_of
from reverie.service.batching import ActBatcher
from reverie.errors import InputError
from reverie.service.inputs import observation_batch, plan
from reverie.service.runtime import Runtime
from reverie.trainer.losses import lambda_return


@pytest.fixture(params=["CartPole-v1", "Pendulum-v1"])
def pair(request, exported_agents):
    agent, export_dir = exported_agents[request.param]
    return agent, Runtime.load(latest_bundle(export_dir))


def observations(agent, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 2.0, (n, *agent.space.obs_shape)).astype(np.float32)


def test_the_service_imports_no_torch():
    """Serving must run where torch is not installed: importing the app and the clients pulls none of it."""
    code = "import sys, service.app, service.server, clients.rest, clients.game_loop; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_act_and_value_match_the_torch_agent(pair):
    """Deterministic actions equal agent.act's; distribution parameters and values (the critic that
    training's returns bootstrap from) agree to 1e-5."""
    agent, runtime = pair
    obs = observations(agent, 200)
    result = runtime.act(obs, deterministic=True, seed=None)
    with torch.no_grad():
        states = agent.world_model.encode(torch.from_numpy(obs))
        params = agent.policy.params(states)
        values = agent.critic_values(states).numpy()  # the critic training bootstraps from (the target, by default)
    np.testing.assert_allclose(result.values, values.reshape(-1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(runtime.value(obs), values.reshape(-1), atol=1e-5, rtol=0)
    expected = [agent.space.to_env_action(agent.act(o, deterministic=True)) for o in obs]
    if agent.space.discrete:
        np.testing.assert_allclose(result.probs, torch.softmax(params[0], -1).numpy(), atol=1e-5, rtol=0)
        assert result.actions == [int(a) for a in expected]
    else:
        np.testing.assert_allclose(result.mean, params[0].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(result.std, params[1].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(result.actions), np.asarray(expected), atol=1e-5, rtol=0)
        # In the env's own units, computed here from the env's bounds rather than by the code under test:
        # Pendulum's torque in [-2, 2] is 2 * tanh(mean), not tanh(mean) nor a clip of it.
        bounds = gym.make(agent.cfg.env_id).action_space
        assert (bounds.low, bounds.high) == (-2.0, 2.0)
        env_units = bounds.low + (np.tanh(params[0].numpy()) + 1) / 2 * (bounds.high - bounds.low)
        np.testing.assert_allclose(np.asarray(result.actions), env_units, atol=1e-5, rtol=0)


def test_sampling_is_reproducible_with_a_seed_and_follows_the_distribution(pair):
    agent, runtime = pair
    obs = np.repeat(observations(agent, 1), 4000, axis=0)
    first = runtime.act(obs, deterministic=False, seed=11)
    assert runtime.act(obs, deterministic=False, seed=11).actions == first.actions
    assert runtime.act(obs, deterministic=False, seed=12).actions != first.actions
    # Unseeded requests share the runtime's generator: each draws fresh samples, and a seeded one
    # after them still replays.
    unseeded = [runtime.act(obs, deterministic=False, seed=None).actions for _ in range(2)]
    assert unseeded[0] != unseeded[1] and first.actions not in unseeded
    assert runtime.act(obs, deterministic=False, seed=11).actions == first.actions
    if agent.space.discrete:  # empirical frequencies match the probabilities
        freq = np.bincount(first.actions, minlength=agent.space.action_dim) / len(obs)
        np.testing.assert_allclose(freq, first.probs[0], atol=0.03)
    else:  # samples stay within the env's bounds and are spread as the pre-tanh Normal says
        actions = np.asarray(first.actions)
        assert (actions >= agent.space.action_low).all() and (actions <= agent.space.action_high).all()
        unit = 2 * (actions - agent.space.action_low) / (agent.space.action_high - agent.space.action_low) - 1
        raw = np.arctanh(np.clip(unit, -0.999999, 0.999999))
        np.testing.assert_allclose(raw.mean(0), first.mean[0], atol=0.1)
        np.testing.assert_allclose(raw.std(0), first.std[0], rtol=0.1)


def test_concurrent_acts_share_one_graph_call_and_each_gets_its_own_answer(exported_agents):
    """Unseeded requests that reach the event loop in the same turn are answered by one act-graph call
    per runtime, each as if alone (to float rounding), a failure staying with its request; a seeded
    request gets a call of its own, so that its seed reproduces the answer exactly."""
    runtimes = {env: Runtime.load(latest_bundle(export_dir)) for env, (_, export_dir) in exported_agents.items()}
    cartpole, pendulum = runtimes["CartPole-v1"], runtimes["Pendulum-v1"]
    obs = {env: observations(exported_agents[env][0], 6) for env in runtimes}
    requests = [(cartpole, obs["CartPole-v1"][0:1], True, None), (cartpole, obs["CartPole-v1"][1:3], False, None),
                (pendulum, obs["Pendulum-v1"][0:1], False, 7), (cartpole, obs["CartPole-v1"][3:4], False, 8),
                (cartpole, np.full((1, 4), np.nan, np.float32), False, None),  # its output is NaN: it fails, alone
                (pendulum, obs["Pendulum-v1"][1:4], True, None), (cartpole, obs["CartPole-v1"][5:6], False, 7),
                (pendulum, obs["Pendulum-v1"][4:5], False, None)]
    registry = CollectorRegistry()
    batcher = ActBatcher(Histogram("calls", "requests per call", buckets=(1, 2, 3, 4), registry=registry))

    async def all_in_one_turn():
        return await asyncio.gather(*(batcher.act(*request) for request in requests), return_exceptions=True)

    answers = asyncio.run(all_in_one_turn())
    # CartPole's three unseeded requests share a call, Pendulum's two theirs; each seeded one is alone.
    assert registry.get_sample_value("calls_count") == 5 and registry.get_sample_value("calls_sum") == 8
    assert [registry.get_sample_value("calls_bucket", {"le": le}) for le in ("1.0", "2.0", "3.0")] == [3, 4, 5]
    for (runtime, batch, deterministic, seed), answer in zip(requests, answers):
        if np.isnan(batch).any():
            assert isinstance(answer, InputError) and answer.field == "obs"
            continue
        alone = runtime.act(batch, deterministic, seed)
        exact = seed is not None
        if exact or deterministic:
            np.testing.assert_allclose(answer.actions, alone.actions, rtol=0 if exact else 1e-6)
        for name in ("values", "probs", "mean", "std"):
            if getattr(alone, name) is not None:
                np.testing.assert_allclose(getattr(answer, name), getattr(alone, name), rtol=0 if exact else 1e-6)


def test_worker_threads_coalesce_like_the_event_loop_and_each_gets_its_own_answer(exported_agents):
    """gRPC's worker threads (`act_blocking`): a request that finds no call running makes one at once;
    the requests that arrive meanwhile share the next call, grouped as on the event loop (one call per
    runtime, a seeded request alone), each with its own answer and a failure staying with its request."""
    runtimes = {env: Runtime.load(latest_bundle(export_dir)) for env, (_, export_dir) in exported_agents.items()}
    cartpole, pendulum = runtimes["CartPole-v1"], runtimes["Pendulum-v1"]
    obs = {env: observations(exported_agents[env][0], 6) for env in runtimes}
    requests = [(cartpole, obs["CartPole-v1"][0:1], True, None), (cartpole, obs["CartPole-v1"][1:3], False, None),
                (pendulum, obs["Pendulum-v1"][0:1], False, 7), (cartpole, np.full((1, 4), np.nan, np.float32), False, None),
                (pendulum, obs["Pendulum-v1"][1:4], True, None), (pendulum, obs["Pendulum-v1"][4:5], False, None)]
    registry = CollectorRegistry()
    batcher = ActBatcher(Histogram("calls", "requests per call", buckets=(1, 2, 3, 4), registry=registry))
    running, release, act_many = threading.Event(), threading.Event(), cartpole.act_many

    def held_first_call(batch):  # the first call stays running until the others are all waiting
        if not running.is_set():
            running.set()
            release.wait(30)
        return act_many(batch)

    cartpole.act_many = held_first_call
    answers: dict[int, object] = {}

    def ask(i: int, request) -> None:
        try:
            answers[i] = batcher.act_blocking(*request)
        except InputError as err:
            answers[i] = err

    first = threading.Thread(target=ask, args=(-1, (cartpole, obs["CartPole-v1"][5:6], True, None)))
    first.start()
    assert running.wait(30)
    threads = [threading.Thread(target=ask, args=(i, request)) for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(batcher._waiting) == len(requests), 30, "every request waiting")
    release.set()
    for thread in [first, *threads]:
        thread.join(30)
    cartpole.act_many = act_many
    # The first call alone; then CartPole's three requests share one, Pendulum's two unseeded theirs, the seeded one alone.
    assert registry.get_sample_value("calls_count") == 4 and registry.get_sample_value("calls_sum") == 7
    assert [registry.get_sample_value("calls_bucket", {"le": le}) for le in ("1.0", "2.0", "3.0")] == [2, 3, 4]
    for i, (runtime, batch, deterministic, seed) in enumerate(requests):
        if np.isnan(batch).any():
            assert isinstance(answers[i], InputError) and answers[i].field == "obs"
            continue
        alone = runtime.act(batch, deterministic, seed)
        if seed is not None or deterministic:
            np.testing.assert_allclose(answers[i].actions, alone.actions, rtol=0 if seed is not None else 1e-6)
        np.testing.assert_allclose(answers[i].values, alone.values, rtol=0 if seed is not None else 1e-6)


def test_imagine_matches_torch_rollout_and_lambda_returns(pair):
    """A plan imagined by the runtime equals the torch world model stepped with the same actions."""
    agent, runtime = pair
    obs = observations(agent, 1, seed=3)
    horizon = 12
    rng = np.random.default_rng(0)
    if agent.space.discrete:
        env_plan = rng.integers(0, agent.space.action_dim, horizon).tolist()
    else:
        env_plan = rng.uniform(agent.space.action_low, agent.space.action_high, (horizon, agent.space.action_dim)).tolist()
    agent_plan = plan(env_plan, runtime.manifest.action_space)
    got = runtime.imagine(obs, horizon, samples=3, deterministic=True, seed=None, plan=agent_plan)
    wm = agent.world_model
    with torch.no_grad():
        state = wm.encode(torch.from_numpy(obs))
        states, rewards, continues = [state], [], []
        for t in range(horizon):
            state, reward, cont, _ = wm.step(state, torch.as_tensor(agent_plan[t:t + 1]))
            states.append(state)
            rewards.append(reward.reshape(-1))
            continues.append(cont.reshape(-1))
        states = torch.stack(states, 1)
        values = agent.critic_values(states.reshape(-1, states.shape[-1])).reshape(1, -1)
        rewards, continues = torch.stack(rewards, 1), torch.stack(continues, 1)
        returns = lambda_return(rewards, continues, values, agent.cfg.gamma, agent.cfg.lambda_)
    for i in range(3):  # every sample follows the same plan
        np.testing.assert_allclose(got.states[i], states[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.rewards[i], rewards[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.continues[i], continues[0].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.values[i], values[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.lambda_return[i], returns[0].numpy(), atol=1e-3, rtol=1e-4)
        np.testing.assert_allclose(np.asarray(got.actions[i], np.float64), np.asarray(env_plan, np.float64), atol=1e-5)


def test_policy_driven_imagination_matches_the_torch_rollout(pair):
    """Without a plan, the served rollout follows the policy's mode through the world model exactly as torch does."""
    agent, runtime = pair
    obs = observations(agent, 1, seed=4)
    horizon = 10
    got = runtime.imagine(obs, horizon, samples=2, deterministic=True, seed=None)
    wm = agent.world_model
    with torch.no_grad():
        state = wm.encode(torch.from_numpy(obs))
        states, actions, rewards = [state], [], []
        for _ in range(horizon):
            action = agent.policy(state).mode()
            state, reward, _, _ = wm.step(state, action)
            states.append(state)
            actions.append(agent.space.to_env_action(action[0].numpy()))
            rewards.append(reward.reshape(-1))
        states, rewards = torch.stack(states, 1), torch.stack(rewards, 1)
    for i in range(2):
        np.testing.assert_allclose(got.states[i], states[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got.rewards[i], rewards[0].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(np.asarray(got.actions[i], np.float64), np.asarray(actions, np.float64), atol=1e-4)


def test_a_bundle_whose_act_graph_fails_is_refused_at_warm_up(exported_agents, tmp_path):
    """act.onnx replaced by another valid graph (the value graph), checksums made right: it loads, but /act
    would fail on every request, so warm-up runs it and the bundle is refused before it can be served."""
    bundle = latest_bundle(exported_agents["CartPole-v1"][1])
    broken = tmp_path / bundle.name
    shutil.copytree(bundle, broken)
    shutil.copy(broken / "value.onnx", broken / "act.onnx")
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["sha256"]["act.onnx"] = sha256_of(broken / "act.onnx")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="warm-up failed"):
        Runtime.load(broken)
    assert Runtime.load(bundle).version == load_manifest(bundle).model_version  # the intact one loads


def test_imagined_samples_differ_but_replay_with_the_seed(pair):
    agent, runtime = pair
    obs = observations(agent, 1, seed=5)
    a = runtime.imagine(obs, 10, samples=8, deterministic=False, seed=1)
    b = runtime.imagine(obs, 10, samples=8, deterministic=False, seed=1)
    np.testing.assert_array_equal(a.states, b.states)
    assert a.actions == b.actions
    assert len({str(t) for t in a.actions}) > 1, "8 sampled trajectories should not all take the same actions"
    assert a.states.shape == (8, 11, agent.cfg.state_dim) and a.lambda_return.shape == (8, 10)


def test_a_bundle_trained_to_sample_next_states_imagines_with_that_noise(exported_agents, tmp_path):
    """Manifest dynamics_std > 0 (trained with dynamics_sample): sampled rollouts of one plan differ by
    Normal(0, dynamics_std) noise on each next state, the seed replays them, and a deterministic
    rollout keeps the mean; a bundle without it imagines the mean however it is asked."""
    agent, export_dir = exported_agents["CartPole-v1"]
    bundle = tmp_path / latest_bundle(export_dir).name
    shutil.copytree(latest_bundle(export_dir), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["dynamics_std"] = 0.1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    noisy, plain = Runtime.load(bundle), Runtime.load(latest_bundle(export_dir))
    obs, actions = observations(agent, 1, seed=6), plan([0, 1] * 5, noisy.manifest.action_space)
    mean = plain.imagine(obs, 10, samples=1, deterministic=False, seed=3, plan=actions).states[0]
    drawn = noisy.imagine(obs, 10, samples=256, deterministic=False, seed=3, plan=actions)
    np.testing.assert_allclose(drawn.states[:, 0], np.broadcast_to(mean[0], drawn.states[:, 0].shape), atol=1e-6)
    first_step = drawn.states[:, 1] - mean[1]
    assert abs(first_step.std() - 0.1) < 0.01 and abs(first_step.mean()) < 0.01, (first_step.mean(), first_step.std())
    assert (drawn.states[:, 1:].std(0) > 0.05).all()  # every later step of every entry differs between samples
    again = noisy.imagine(obs, 10, samples=256, deterministic=False, seed=3, plan=actions)
    np.testing.assert_array_equal(drawn.states, again.states)
    kept = noisy.imagine(obs, 10, samples=2, deterministic=True, seed=None, plan=actions)
    np.testing.assert_allclose(kept.states, np.stack([mean, mean]), atol=1e-5)
    unsampled = plain.imagine(obs, 10, samples=4, deterministic=False, seed=3, plan=actions)
    np.testing.assert_allclose(unsampled.states, np.stack([mean] * 4), atol=1e-5)


@pytest.mark.parametrize("value, field, message", [
    ([0.1, 0.2, 0.3], "obs", "expected 4 elements"),
    ([0.1, True, 0.3, 0.4], "obs[1]", "boolean"),
    ([0.1, "0.2", 0.3, 0.4], "obs[1]", "string"),
    ([0.1, float("nan"), 0.3, 0.4], "obs[1]", "finite"),
    ([0.1, 0.2, float("-inf"), 0.4], "obs[2]", "finite"),
    ([0.1, 0.2, 0.3, 1e39], "obs[3]", "overflows float32"),
    ([[0.1], 0.2, 0.3, 0.4], "obs[0]", "expected a number, got list"),
    (0.5, "obs", "expected an array"),
])
def test_observation_checks_name_the_field(value, field, message, exported_agents):
    runtime = Runtime.load(latest_bundle(exported_agents["CartPole-v1"][1]))
    with pytest.raises(InputError) as err:
        observation_batch(value, runtime.manifest.observation_space, "obs", batched=False)
    assert err.value.field == field and message in err.value.message
