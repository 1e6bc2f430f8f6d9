"""Serving an agent with memory (CartPole without velocities, sequence mode): the client's `history`,
a server `session` and an ActStream's own history all give the torch agent's answers; bad histories
are 422 / INVALID_ARGUMENT naming the field; sessions are bounded, expire, and survive a reload."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
import torch

from reverie.clients.grpc_client import GrpcClient, _request
from reverie.clients.rest import ApiError, RestClient
from reverie import envs
from reverie.bundle import latest_bundle
from reverie.history import Recent
from loopback import wait_until
from serving import ThreadServer, publish_copy
from reverie.service.runtime import Runtime
from reverie.service.sessions import Sessions
from reverie.trainer.agent import Agent, Window
from reverie.trainer.components import Rollout

OBS = [0.02, 0.05]  # cart position, pole angle


@pytest.fixture(scope="module")
def server(memory_agent):
    with ThreadServer(memory_agent[1], max_body_bytes=64 * 1024) as server:
        yield server


def torch_episode(agent: Agent, steps: int = 25):
    """A real episode played by the torch agent with its episode window: observations, actions, probabilities."""
    env, window = envs.make("CartPole-v1", [0, 2]), Window(agent.world_model, agent.cfg.history_length)
    obs, _ = env.reset(seed=3)
    observations, actions, probs = [], [], []
    for _ in range(steps):
        with torch.no_grad():
            state = agent.world_model.encode(torch.as_tensor(obs)[None])
            probs.append(agent.policy(agent.world_model.belief(state, window.memory())).probs[0].numpy())
        action = int(agent.step(obs, window, deterministic=True))
        observations.append(obs)
        actions.append(action)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return observations, actions, probs


def test_history_session_and_streams_give_the_torch_agents_answers(memory_agent, server):
    """Step by step through a real episode, by every route a client's memory can take; and the memory
    matters: without it some step's probabilities differ."""
    agent, _ = memory_agent
    observations, actions, probs = torch_episode(agent)
    rest, grpc_client = RestClient(server.url), GrpcClient(server.grpc_target)
    with rest, grpc_client, grpc_client.stream(deterministic=True) as stream:
        recent, forgetful = Recent(3), []
        for t, (obs, action, p) in enumerate(zip(observations, actions, probs)):
            value, _ = rest.value(obs, history=recent)
            if t:  # the session holds the same steps (at t = 0 it is the last episode's, until the reset below)
                assert rest.value(obs, session="episode-1")[0] == pytest.approx(value, abs=1e-6)
                assert grpc_client.value(obs, session="episode-2")[0] == pytest.approx(value, abs=1e-6)
            answers = {
                "rest-history": rest.act(obs, deterministic=True, history=recent),
                "rest-session": rest.act(obs, deterministic=True, session="episode-1", reset=t == 0),
                "grpc-history": grpc_client.act(obs, deterministic=True, history=recent),
                "grpc-session": grpc_client.act(obs, deterministic=True, session="episode-2", reset=t == 0),
                "grpc-stream": stream.act(obs, reset=t == 0),
            }
            for route, answer in answers.items():
                assert answer.action == action, (route, t)
                np.testing.assert_allclose(answer.probs, p, atol=1e-5, err_msg=f"{route} at step {t}")
                assert answer.session_step == (t if "session" in route or route == "grpc-stream" else None), route
            forgetful.append(rest.act(obs, deterministic=True).probs)
            recent.record(obs, action)
        assert rest.act(observations[0], deterministic=True, session="episode-1").session_step == len(actions)
    assert len(actions) > 5 and not np.allclose(forgetful, probs, atol=1e-3)


def test_imagination_starts_from_the_remembered_belief_and_attends_over_its_own_steps(memory_agent, server):
    """Served imagination starts from the belief after the client's history (or its session's steps),
    and the transformer dynamics read the rollout's earlier steps as torch's rollout does: 6 steps
    through a window of 3, so it slides. Each imagined step carries the ensemble's disagreement."""
    agent, _ = memory_agent
    observations, actions, _ = torch_episode(agent, 4)
    with RestClient(server.url) as rest, GrpcClient(server.grpc_target) as grpc_client:
        history = (observations[:3], actions[:3])
        with torch.no_grad():
            belief = agent.world_model.belief_after(torch.as_tensor(observations[3])[None], torch.as_tensor(np.stack(history[0]))[None],
                                                    torch.as_tensor(history[1])[None])
        for t in range(3):  # the session records the agent's own (deterministic) actions: the history's
            assert rest.act(observations[t], deterministic=True, session="imagining", reset=t == 0).action == actions[t]
        for client in (rest, grpc_client):
            remembered = client.imagine(observations[3], horizon=2, deterministic=True, history=history)
            np.testing.assert_allclose(remembered.trajectories[0].states[0], belief[0].numpy(), atol=1e-5)
            in_session = client.imagine(observations[3], horizon=2, deterministic=True, session="imagining")
            np.testing.assert_allclose(in_session.trajectories[0].states[0], belief[0].numpy(), atol=1e-5)
            plain = client.imagine(observations[3], horizon=2, deterministic=True)
            assert not np.allclose(plain.trajectories[0].states[0], belief[0].numpy(), atol=1e-3)
        wm, state, rollout, states, doubts = agent.world_model, belief, Rollout(), [belief], []
        with torch.no_grad():
            for _ in range(6):
                state, doubt = wm._transition(state, wm.encode_action(agent.policy(state).mode()), rollout)
                states.append(state)
                doubts.append(doubt)
        for client in (rest, grpc_client):
            served = client.imagine(observations[3], horizon=6, deterministic=True, history=history).trajectories[0]
            np.testing.assert_allclose(served.states, torch.cat(states).numpy(), atol=1e-4)
            np.testing.assert_allclose(served.disagreement, torch.cat(doubts).numpy(), atol=1e-5)  # per imagined step
            assert (served.disagreement > 0).all()


HISTORY = {"observations": [OBS, OBS], "actions": [0, 1]}
BAD = [
    ({"obs": OBS, "history": {"observations": [OBS, OBS], "actions": [0]}}, "history.actions"),
    ({"obs": OBS, "history": {"observations": [OBS] * 4, "actions": [0] * 4}}, "history.observations"),
    ({"obs": OBS, "history": {"observations": [OBS, [0.1, 0.2, 0.3]], "actions": [0, 1]}}, "history.observations[1]"),
    ({"obs": OBS, "history": {"observations": [OBS, [0.1, float("nan")]], "actions": [0, 1]}}, "history.observations[1][1]"),
    ({"obs": OBS, "history": {"observations": [OBS, OBS], "actions": [0, 2]}}, "history.actions[1]"),
    ({"obs": OBS, "history": {"observations": [OBS], "actions": [0]}, "session": "a"}, "history"),
    ({"observations": [OBS, OBS], "history": HISTORY}, "observations"),
    ({"observations": [OBS, OBS], "session": "a"}, "observations"),
    ({"obs": OBS, "reset": True}, "reset"),
    ({"obs": OBS, "session": "not an id"}, "session"),
    ({"obs": OBS, "session": "x" * 129}, "session"),
    ({"obs": OBS, "history": {"observations": [OBS]}}, "history.actions"),
]


def test_bad_histories_are_422_naming_the_field_and_store_nothing(server):
    with RestClient(server.url) as rest:
        before = rest.act(OBS, deterministic=True, session="kept", reset=True)
        for body, field in BAD:
            body = {**body, "session": body["session"]} if "session" in body else body
            response = httpx.post(f"{server.url}/act", content=_json(body), headers={"content-type": "application/json"})
            assert response.status_code == 422 and response.json()["field"] == field, (body, response.text)
        response = httpx.post(f"{server.url}/act", json={"obs": OBS, "session": "kept", "history": HISTORY})
        assert response.status_code == 422
        assert rest.act(OBS, deterministic=True, session="kept").session_step == before.session_step + 1  # nothing recorded meanwhile


def _json(body) -> bytes:
    import json
    return json.dumps(body).encode()  # NaN as the bare token, as a careless client would send it


def test_grpc_refuses_bad_histories_with_invalid_argument_naming_the_field(server):
    with GrpcClient(server.grpc_target) as client:
        cases = [
            (lambda: client.act(OBS, history=([OBS, OBS], [0])), "history.actions"),
            (lambda: client.act(OBS, history=([OBS] * 4, [0] * 4)), "history.observations"),
            (lambda: client.act(OBS, history=([[0.1, 0.2, 0.3]], [0])), "history.observations"),
            (lambda: client.act(OBS, history=([OBS], [5])), "history.actions[0]"),
            (lambda: client.act(OBS, history=([OBS], [0]), session="a"), "history"),
            (lambda: client.act(OBS, reset=True), "reset"),
            (lambda: client.act(OBS, session="bad id"), "session"),
            (lambda: client._call(client.stub.Act, _request([OBS, OBS], True, None, session="a")), "observations"),
            (lambda: client.value(OBS, history=([OBS] * 4, [0] * 4)), "history.observations"),
        ]
        for call, field in cases:
            with pytest.raises(ApiError) as err:
                call()
            assert (err.value.status, err.value.field) == ("INVALID_ARGUMENT", field), err.value
        for extra in ({"history": ([OBS], [0])}, {"session": "a"}):  # a stream keeps its own
            with pytest.raises(grpc.RpcError) as err:
                list(client.stub.ActStream(iter([_request(OBS, True, None, **extra)])))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith(next(iter(extra)))
        assert client.act(OBS, deterministic=True).model_version == 1  # still serving


def test_a_model_without_memory_takes_no_history(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1]) as flat, RestClient(flat.url) as rest:
        obs = [0.02, -0.3, 0.05, 0.4]
        with pytest.raises(ApiError) as err:
            rest.act(obs, history=([obs], [0]))
        assert (err.value.status, err.value.field) == (422, "history.observations") and "no memory" in err.value.detail
        assert rest.act(obs, session="s", reset=True).session_step == 0  # a session is harmless: it keeps no steps
        assert rest.act(obs, session="s").session_step == 1


def record(sessions: Sessions, session_id: str, session) -> None:
    """One acted step of a session, kept as the call layer keeps it."""
    session.record(np.zeros(2, np.float32), 0, 1)
    sessions.save(session_id, session)


def test_sessions_stay_within_their_budget_and_expire(memory_agent):
    """A flood of new ids evicts the least recently used sessions instead of growing; an unused session
    expires after ttl_s; a used one does not."""
    runtime = Runtime.load(latest_bundle(memory_agent[1]))
    clock = [0.0]
    one = Sessions._size(runtime)
    sessions = Sessions(budget_bytes=10 * one, ttl_s=60, timer=lambda: clock[0])
    kept = sessions.open("kept", runtime, reset=False)
    record(sessions, "kept", kept)
    for i in range(1000):
        record(sessions, f"flood-{i}", sessions.open(f"flood-{i}", runtime, reset=False))
        if i % 3 == 0:  # the kept session stays in use
            record(sessions, "kept", sessions.open("kept", runtime, reset=False))
    assert len(sessions) == 10 and sessions.nbytes <= 10 * one
    assert sessions.peek("flood-0") is None and sessions.peek("flood-999") is not None
    assert sessions.peek("kept").step == 1 + 334
    clock[0] += 59
    record(sessions, "flood-999", sessions.peek("flood-999"))
    clock[0] += 2
    assert sessions.peek("kept") is None and sessions.peek("flood-999") is not None and len(sessions) == 1
    assert sessions.open("kept", runtime, reset=False).step == 0  # back as a new episode


def test_a_session_expires_on_the_server_and_is_counted_in_metrics(memory_agent):
    with ThreadServer(memory_agent[1], session_ttl_s=0.5) as served, RestClient(served.url) as rest:
        assert [rest.act(OBS, session="short").session_step for _ in range(3)] == [0, 1, 2]
        assert "reverie_sessions 1.0" in httpx.get(f"{served.url}/metrics").text
        time.sleep(0.7)
        assert rest.act(OBS, session="short").session_step == 0


def test_a_session_survives_a_reload_and_the_new_version_reads_its_steps(memory_agent, tmp_path):
    export_dir = tmp_path / "export"
    publish_copy(latest_bundle(memory_agent[1]), export_dir)
    with ThreadServer(export_dir, poll_interval=0.05) as served, RestClient(served.url) as rest:
        observations, actions = [OBS, [0.03, 0.06], [0.04, 0.08]], []
        for t, obs in enumerate(observations):
            actions.append(rest.act(obs, deterministic=True, session="long", reset=t == 0).action)
        publish_copy(latest_bundle(memory_agent[1]), export_dir)
        wait_until(lambda: served.store.current.version == 2, 10, "reload to version 2")
        after = rest.act([0.05, 0.1], deterministic=True, session="long")
        stateless = rest.act([0.05, 0.1], deterministic=True, history=(observations, actions))
        assert (after.model_version, after.session_step) == (2, 3)
        assert after.probs == pytest.approx(stateless.probs, abs=1e-6)
