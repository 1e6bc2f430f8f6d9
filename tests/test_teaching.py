"""Teaching in a session: clients that play CartPole with the served agent over a REST session or a gRPC
ActStream report each step's outcome, and the server logs exactly the transitions they played, before it
answers; reports it cannot place are refused and log nothing."""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
from collections import Counter

import gymnasium as gym
import httpx
import numpy as np
import pytest

from reverie.clients.game_loop import LocalTeacher, Player, teach
from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import ApiError, RestClient
from reverie import envs
from reverie.experience import SegmentReader, decode, open_reader
from reverie.service.runtime import Runtime
from loopback import wait_until
from serving import ProcessServer, ThreadServer


def logged(folder) -> list:
    return [decode(payload) for _, _, payload in SegmentReader(folder).read(0).records]


@pytest.fixture(scope="module")
def server(exported_agents, tmp_path_factory):
    log = tmp_path_factory.mktemp("teaching") / "log"
    with ThreadServer(exported_agents["CartPole-v1"][1], experience=log) as server:
        yield server


def play(act, episodes: int, seed: int) -> list[list[tuple]]:
    """Episodes of (obs, action, reward, next_obs, terminated, truncated) played in the real env, each step
    acted by `act(obs, first, outcome)` where `outcome` is (reward, terminated, truncated) of the step before."""
    played = []
    for e in range(episodes):
        env = gym.make("CartPole-v1", max_episode_steps=5 if e % 2 else 500)  # every other episode is cut short
        obs, _ = env.reset(seed=seed + e)
        steps, outcome = [], None
        while True:
            action = act(obs, not steps, outcome)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            steps.append((obs, action, reward, next_obs, terminated, truncated))
            obs, outcome = next_obs, (reward, terminated, truncated)
            if terminated or truncated:
                act(obs, False, outcome)  # the episode's last observation, with its last outcome
                break
        played.append(steps)
    return played


def check_logged(records: list, played: list[list[tuple]], source: str) -> None:
    """The log holds each played step once, in order, as the transition the client saw, from `source`
    (a prefix, ending in ":", for an ActStream's own id)."""
    assert len(records) == sum(map(len, played))
    (logged_source,) = {r.source for r in records}  # one client, one source
    assert logged_source == source or source.endswith(":") and logged_source.startswith(source) and len(logged_source) > len(source)
    episodes = []
    for steps in played:
        mine, records = records[:len(steps)], records[len(steps):]
        assert len({r.episode for r in mine}) == 1 and [r.index for r in mine] == list(range(len(steps)))
        episodes.append(mine[0].episode)
        for r, (obs, action, reward, next_obs, terminated, truncated) in zip(mine, steps):
            np.testing.assert_array_equal(r.observations, np.stack([obs, next_obs]).astype(np.float32))
            assert (r.actions.tolist(), r.rewards.tolist(), r.model_versions.tolist()) == ([action], [reward], [1])
            assert (r.terminated, r.truncated) == (terminated, truncated)
    assert len(set(episodes)) == len(episodes)  # a new episode id after each end


def test_a_rest_session_logs_the_transitions_its_client_played(server):
    before = len(logged(server.settings.experience))
    with RestClient(server.url) as client:
        def act(obs, first, outcome):
            reward, terminated, truncated = outcome or (None, False, False)
            step = client.act(obs, seed=3, session="player", reset=first, reward=reward, terminated=terminated,
                              truncated=truncated)
            assert step.session_step is not None
            return step.action

        played = play(act, 4, seed=10)
    assert any(steps[-1][5] for steps in played) and any(steps[-1][4] for steps in played)  # both ends seen
    check_logged(logged(server.settings.experience)[before:], played, "session:player")


def test_an_actstream_logs_the_transitions_its_client_played(server):
    before = len(logged(server.settings.experience))
    with GrpcClient(server.grpc_target) as client, client.stream() as stream:
        def act(obs, first, outcome):  # no reset after an end: the stream starts the next episode by itself
            reward, terminated, truncated = outcome or (None, False, False)
            step = stream.act(obs, seed=3, reward=reward, terminated=terminated, truncated=truncated)
            assert first == (step.session_step == 0) or terminated or truncated
            return step.action

        played = play(act, 2, seed=20)
    check_logged(logged(server.settings.experience)[before:], played, "stream:")


OBS = [0.01, 0.02, 0.03, 0.04]


def test_the_game_loops_teachers_log_every_step_they_play(server, exported_agents):
    """`game_loop --teach`: over a session every step becomes a logged transition; acting locally with the
    bundle's ONNX graphs, the steps arrive as uploaded fragments of at most --fragment-steps, in order."""
    spec = envs.EnvSpec.of({"env_id": "CartPole-v1"})
    folder = server.settings.experience
    with RestClient(server.url) as client:
        before = len(logged(folder))
        summary = teach(Player(lambda obs, **m: client.act(obs, **m), "session", 0), spec, 40, seed=3, rate=None)
        session = logged(folder)[before:]
        assert len(session) == summary["steps"] >= 40 and {r.steps for r in session} == {1}
        teacher = LocalTeacher(exported_agents["CartPole-v1"][1], client.upload, fragment_steps=7, load=Runtime.load)
        summary = teach(teacher, spec, 40, seed=4, rate=None)
    uploaded = logged(folder)[before + len(session):]
    assert sum(r.steps for r in uploaded) == summary["steps"] and max(r.steps for r in uploaded) == 7
    for episode, played in zip(dict.fromkeys(r.episode for r in uploaded), summary["played"]):
        mine = [r for r in uploaded if r.episode == episode]
        assert [r.index for r in mine] == list(range(len(mine)))
        assert all(np.array_equal(a.observations[-1], b.observations[0]) for a, b in zip(mine, mine[1:]))
        assert mine[-1].terminated or mine[-1].truncated
        assert sum(r.rewards.sum() for r in mine) == played["return"]


@pytest.mark.parametrize("body, status, field", [
    ({"reward": 1.0}, 422, "reward"),  # no session
    ({"session": "fresh", "reward": 1.0}, 409, "session"),  # nothing acted yet: the session's state refuses it
    ({"session": "played", "reward": float("nan")}, 422, "reward"),
    ({"session": "played", "reward": 1e9}, 422, "reward"),
    ({"session": "played", "terminated": True}, 422, "terminated"),  # an end without its reward
    ({"session": "played", "reward": 1.0, "reset": True}, 409, "session"),  # a reset starts anew: nothing to complete
])
def test_a_report_the_server_cannot_place_is_refused_and_logs_nothing(server, body, status, field):
    with RestClient(server.url) as client:
        client.act(OBS, session="played", reset=True)
    before = len(logged(server.settings.experience))
    answer = httpx.post(f"{server.url}/act", content=json.dumps({"obs": OBS, **body}), headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["field"]) == (status, field), answer.text
    assert len(logged(server.settings.experience)) == before


def test_reports_take_the_experience_token_and_a_server_without_a_log_refuses_them(exported_agents, tmp_path):
    models = exported_agents["CartPole-v1"][1]
    with ThreadServer(models, experience=tmp_path / "log", api_token="reader", experience_token="writer") as server:
        with RestClient(server.url, token="reader") as client:
            client.act(OBS, session="s", reset=True)
            with pytest.raises(ApiError) as denied:
                client.act(OBS, session="s", reward=1.0)
            assert (denied.value.status, denied.value.field) == (403, "Authorization")
            assert client.act(OBS, session="s").session_step == 1  # acting alone is still allowed
        with GrpcClient(server.grpc_target, token="reader") as client, client.stream() as stream:
            stream.act(OBS, reset=True)
            with pytest.raises(ApiError) as denied:
                stream.act(OBS, reward=1.0)
            assert denied.value.status == "PERMISSION_DENIED"
        assert logged(tmp_path / "log") == []
        with RestClient(server.url, token="writer") as client:
            client.act(OBS, session="w", reset=True)
            client.act(OBS, session="w", reward=1.0)
        assert len(logged(tmp_path / "log")) == 1
    with ThreadServer(models) as server, RestClient(server.url) as client:
        client.act(OBS, session="s", reset=True)
        with pytest.raises(ApiError) as refused:
            client.act(OBS, session="s", reward=1.0)
        assert (refused.value.status, refused.value.field) == (404, "reward")


def uploader(k: int, url: str, uploaded: dict) -> None:
    """Uploads fragments until the server goes; `uploaded`: fragment key -> the seq its acknowledgement gave."""
    with RestClient(url, timeout=5) as client:
        for i in itertools.count():
            fragment = {"episode": f"client-{k}", "index": i, "observations": [OBS] * 3, "actions": [0, 1],
                        "rewards": [1.0, 1.0]}
            try:
                answer = client.upload([fragment])[0]
            except (ApiError, httpx.TransportError):
                return
            uploaded[f"client-{k}\x00{i}".encode()] = answer["seq"]


def player(k: int, url: str, reported: Counter, stop: threading.Event) -> None:
    """Reports outcomes in a session until the server goes or `stop`; counts the acknowledged reports."""
    with RestClient(url, timeout=5) as client:
        try:
            client.act(OBS, session=f"player-{k}", reset=True)
            while not stop.is_set():
                client.act(OBS, session=f"player-{k}", reward=1.0)
                reported[f"session:player-{k}"] += 1
        except (ApiError, httpx.TransportError):
            return


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
@pytest.mark.parametrize("backend", ["segments", "redis"])
def test_nothing_acknowledged_is_lost_when_a_server_is_killed(backend, exported_agents, tmp_path, request):
    """`kill -9` of `reverie serve` while four clients send experience (two uploading fragments, two
    reporting outcomes in sessions). Segment files: after a restart the log holds every fragment and
    transition that was acknowledged, and takes more. Redis: two replicas share one stream, the clients
    split across them; one is killed, and the stream holds all it acknowledged while the other takes more."""
    models = exported_agents["CartPole-v1"][1]
    log = request.getfixturevalue("redis_server").stream(f"kill-{tmp_path.name}") if backend == "redis" else str(tmp_path / "log")
    replicas = 2 if backend == "redis" else 1
    uploaded: dict[bytes, int] = {}
    reported: Counter = Counter()
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(ProcessServer(models, args=("--experience", log))) for _ in range(replicas)]
        threads = [threading.Thread(target=uploader, args=(k, servers[k % replicas].url, uploaded)) for k in (0, 1)]
        threads += [threading.Thread(target=player, args=(k, servers[k % replicas].url, reported, stop)) for k in (2, 3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(uploaded) >= 40 and sum(reported.values()) >= 40, 60, "acknowledged experience")
        servers[0].process.kill()  # SIGKILL: no flush, no close, mid-write for some request
        servers[0].process.wait(timeout=10)
        if backend == "redis":  # the other replica's clients go on meanwhile
            at_kill = len(uploaded)
            wait_until(lambda: len(uploaded) >= at_kill + 20, 30, "uploads to the replica left")
        stop.set()
        for t in threads:
            t.join(timeout=10)
        survivor = servers[1] if backend == "redis" else stack.enter_context(ProcessServer(models, args=("--experience", log)))
        with RestClient(survivor.url) as client:
            assert client.upload([{"episode": "after", "index": 0, "observations": [OBS] * 2, "actions": [1],
                                   "rewards": [1.0]}])[0]["stored"]
    records = open_reader(log).read(0, max_records=10**6).records
    seqs = {key: seq for seq, key, _ in records}
    assert all(seqs.get(key) == seq for key, seq in uploaded.items()), "an acknowledged upload is missing"
    assert {k.split(b"\x00")[0] for k in uploaded} == {b"client-0", b"client-1"}  # both replicas' uploaders
    stored = Counter(decode(payload).source for _, _, payload in records)
    assert all(stored[source] >= n for source, n in reported.items()), (stored, reported)


@pytest.mark.parametrize("transport", ["rest", "grpc-stream"])
def test_an_evaluation_episode_plays_deterministically_and_is_logged_as_one(server, transport):
    """`evaluate` with `reset`: the episode's actions are the deterministic ones (whatever the request
    asks), its transitions are marked as an evaluation, and the next episode is not one."""
    with contextlib.ExitStack() as stack:
        if transport == "rest":
            client = stack.enter_context(RestClient(server.url))
            act = lambda obs, **kw: client.act(obs, session="judge", **kw)  # noqa: E731
        else:
            grpc_client = stack.enter_context(GrpcClient(server.grpc_target))
            stream = stack.enter_context(grpc_client.stream())
            act = lambda obs, **kw: stream.act(obs, **kw)  # noqa: E731
        greedy = RestClient(server.url)
        stack.callback(greedy.close)
        before = len(logged(server.settings.experience))
        env = gym.make("CartPole-v1", max_episode_steps=30)
        episodes = []
        for evaluate in (True, False):
            obs, _ = env.reset(seed=5)
            step = act(obs, reset=True, evaluate=evaluate, seed=None)
            actions = []
            while True:
                if evaluate:
                    assert step.action == greedy.act(obs, deterministic=True).action  # no sample, ever
                actions.append(step.action)
                obs, reward, terminated, truncated, _ = env.step(step.action)
                step = act(obs, reward=float(reward), terminated=terminated, truncated=truncated, seed=None)
                if terminated or truncated:
                    break
            episodes.append(actions)
    records = logged(server.settings.experience)[before:]
    evaluated = [r for r in records if r.evaluation]
    assert len(evaluated) == len(episodes[0]) and len(records) == len(episodes[0]) + len(episodes[1])
    assert [r.actions[0] for r in evaluated] == episodes[0] and len({r.episode for r in evaluated}) == 1
    assert not any(r.evaluation for r in records[len(evaluated):])  # the next episode is an ordinary one


def test_evaluate_needs_a_session_and_a_reset(server):
    with RestClient(server.url) as client:
        for kwargs in ({}, {"session": "e1"}):
            with pytest.raises(ApiError) as refused:
                client.act(OBS, evaluate=True, **kwargs)
            assert refused.value.status == 422 and refused.value.field == "evaluate"
