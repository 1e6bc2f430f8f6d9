"""Sessions any replica can answer (`--sessions redis://...`), against a real redis-server: an agent
with memory stepped through two replicas in turn answers as through one, and a replica killed with -9
mid-episode loses neither the session nor a reported step."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from loopback import RedisServer, wait_until
from reverie.clients.rest import RestClient
from serving import ProcessServer, ThreadServer, logged_fragments


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


def observations(n: int) -> list[list[float]]:
    return np.random.default_rng(7).normal(0.0, 0.1, (n, 2)).round(4).tolist()


def play(clients: list[RestClient], session: str, episode: list) -> list[tuple]:
    """One episode, step i through clients[i % len(clients)]: each step's (action, value, session step)."""
    return [(a.action, round(a.value, 5), a.session_step) for a in
            (clients[i % len(clients)].act(obs, deterministic=True, session=session, reset=i == 0)
             for i, obs in enumerate(episode))]


def test_a_session_steps_through_any_replica_as_through_one(redis_server, memory_agent):
    export, episode = memory_agent[1], observations(12)
    with ThreadServer(export, sessions=redis_server.url) as a, ThreadServer(export, sessions=redis_server.url) as b, \
            ThreadServer(export) as alone, RestClient(a.url) as rest_a, RestClient(b.url) as rest_b, \
            RestClient(alone.url) as rest_alone:
        shared = play([rest_a, rest_b], "round-robin", episode)
        single = play([rest_alone], "one-replica", episode)
        forgetful = [(x.action, round(x.value, 5)) for x in (rest_alone.act(obs, deterministic=True) for obs in episode)]
        assert len(a.service.calls.sessions) == 1  # both replicas see the one session in Redis
    assert shared == single
    assert [step for *_, step in shared] == list(range(12))
    assert [s[:2] for s in shared] != forgetful  # the memory moved the answers: the session carried it


def test_a_replica_killed_mid_episode_loses_no_session_and_no_reported_step(redis_server, memory_agent):
    export, episode, stream = memory_agent[1], observations(20), redis_server.stream("killed-replica")
    flags = ("--sessions", redis_server.url, "--experience", stream)
    with ProcessServer(export, args=flags) as first, ProcessServer(export, args=flags) as second, \
            RestClient(first.url) as rest_first, RestClient(second.url) as rest_second:
        steps = [rest_first.act(episode[0], session="robot", reset=True).session_step]
        for i, obs in enumerate(episode[1:10], 1):
            steps.append((rest_first if i % 2 else rest_second).act(obs, session="robot", reward=1.0).session_step)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        for obs in episode[10:-1]:
            steps.append(rest_second.act(obs, session="robot", reward=1.0).session_step)
        steps.append(rest_second.act(episode[-1], session="robot", reward=1.0, terminated=True).session_step)
        wait_until(lambda: len(logged_fragments(stream)) == 19, 10, "every reported step in the log")
    assert steps == list(range(20))  # the episode went on where the killed replica left it
    fragments = logged_fragments(stream)
    assert [f.index for f in fragments] == list(range(19)) and len({f.episode for f in fragments}) == 1
    assert [f.terminated for f in fragments] == [False] * 18 + [True]
    for f, (before, after) in zip(fragments, zip(episode, episode[1:])):  # each transition is the step it reports
        np.testing.assert_allclose(f.observations, [before, after], atol=1e-6)
