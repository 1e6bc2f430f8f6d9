"""POST /experience and gRPC UploadExperience against a real server: episodes played in the real env by
the real clients reach the log exactly, retries are stored once, and every bad upload is a 4xx (or
INVALID_ARGUMENT) naming its field that stores nothing."""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import httpx
import numpy as np
import pytest

from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import ApiError, RestClient
from reverie.experience import Fragment, SegmentReader, decode
from reverie.service.experience import ExperienceLog
from serving import ThreadServer


def played(client: RestClient, env_id: str, episode: str, steps: int, seed: int) -> dict:
    """One fragment of `steps` steps from a reset, acted by the served agent in the real env."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    fragment = {"episode": episode, "index": 0, "observations": [obs], "actions": [], "rewards": [], "model_versions": []}
    for _ in range(steps):
        step = client.act(obs, seed=seed)
        obs, reward, terminated, truncated, _ = env.step(step.action)
        for key, value in (("observations", obs), ("actions", step.action), ("rewards", reward),
                           ("model_versions", step.model_version)):
            fragment[key].append(value)
        if terminated or truncated:
            return {**fragment, "terminated": terminated, "truncated": truncated}
    return fragment


def logged(folder) -> list:
    return [decode(payload) for _, _, payload in SegmentReader(folder).read(0).records]


@pytest.fixture(scope="module")
def cartpole(exported_agents, tmp_path_factory):
    log = tmp_path_factory.mktemp("experience") / "log"
    with ThreadServer(exported_agents["CartPole-v1"][1], experience=log, max_fragment_steps=50) as server:
        yield server


def test_uploaded_fragments_reach_the_log_exactly_and_a_retry_is_stored_once(cartpole):
    with RestClient(cartpole.url) as client:
        fragments = [played(client, "CartPole-v1", f"ep-{seed}", 40, seed) for seed in range(3)]
        first = len(logged(cartpole.settings.experience))
        answers = client.upload(fragments)
        assert [(a["seq"], a["stored"]) for a in answers] == [(first, True), (first + 1, True), (first + 2, True)]
        again = client.upload(fragments[1:2])  # a retry after a lost answer
        assert again == [{"episode": "ep-1", "index": 0, "seq": first + 1, "stored": False}]
    stored = logged(cartpole.settings.experience)[first:]
    assert len(stored) == 3
    for sent, got in zip(fragments, stored):
        assert (got.episode, got.index, got.source) == (sent["episode"], 0, "upload")
        np.testing.assert_array_equal(got.observations, np.asarray(sent["observations"], np.float32))
        np.testing.assert_array_equal(got.actions, sent["actions"])
        np.testing.assert_array_equal(got.rewards, sent["rewards"])
        assert got.model_versions.tolist() == [1] * got.steps
        assert (got.terminated, got.truncated) == (sent.get("terminated", False), sent.get("truncated", False))


def test_grpc_uploads_log_what_rest_uploads_do(cartpole):
    with RestClient(cartpole.url) as rest, GrpcClient(cartpole.grpc_target) as grpc:
        fragment = played(rest, "CartPole-v1", "both", 30, seed=7)
        first = len(logged(cartpole.settings.experience))
        rest.upload([fragment])
        answer = grpc.upload([{**fragment, "episode": "both-grpc"}, {**fragment, "episode": "both", "index": 0}])
        assert [(a["episode"], a["seq"], a["stored"]) for a in answer] == [("both-grpc", first + 1, True), ("both", first, False)]
    by_rest, by_grpc = logged(cartpole.settings.experience)[first:]
    for name in ("observations", "actions", "rewards", "model_versions"):
        np.testing.assert_array_equal(getattr(by_rest, name), getattr(by_grpc, name))
        assert getattr(by_rest, name).dtype == getattr(by_grpc, name).dtype
    assert (by_grpc.terminated, by_grpc.truncated) == (by_rest.terminated, by_rest.truncated)


def test_a_bad_grpc_fragment_is_invalid_argument_naming_it_and_nothing_of_the_call_is_stored(cartpole):
    before = len(logged(cartpole.settings.experience))
    with GrpcClient(cartpole.grpc_target) as client:
        for bad, field in (({"actions": [0, 2]}, "fragments[1].actions[1]"),
                           ({"rewards": [1.0, float("inf")]}, "fragments[1].rewards[1]"),
                           ({"observations": [[0.0] * 4] * 2}, "fragments[1].observations"),
                           ({"model_versions": [1, -2]}, "fragments[1].model_versions[1]"),
                           ({"episode": "no spaces"}, "fragments[1].episode")):
            with pytest.raises(ApiError) as refused:
                client.upload([{**PLAYED, "episode": "g-ok"}, {**PLAYED, "episode": "g-bad", **bad}])
            assert (refused.value.status, refused.value.field) == ("INVALID_ARGUMENT", field)
    assert len(logged(cartpole.settings.experience)) == before


def test_box_actions_are_logged_in_the_agents_scaled_form(exported_agents, tmp_path):
    with ThreadServer(exported_agents["Pendulum-v1"][1], experience=tmp_path / "log") as server, RestClient(server.url) as client:
        fragment = played(client, "Pendulum-v1", "swing", 5, seed=0)
        fragment["actions"][0] = [2.0]  # the Box's upper bound: 1 in the agent's form
        client.upload([fragment])
    (got,) = logged(tmp_path / "log")
    assert got.actions.dtype == np.float32 and got.actions.shape == (5, 1)
    assert got.actions[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(got.actions[1:, 0], np.asarray(fragment["actions"][1:])[:, 0] / 2.0, atol=1e-6)


STEP = {"obs": [0.0] * 4, "action": 0, "reward": 1.0, "model_version": 1}
GOOD = {"episode": "e", "index": 0, "steps": [STEP, STEP], "next_obs": [0.0] * 4}  # as the wire carries it
PLAYED = {"episode": "e", "index": 0, "observations": [[0.0] * 4] * 3, "actions": [0, 1], "rewards": [1.0, 1.0]}  # as a client keeps it


@pytest.mark.parametrize("change, field", [
    ({"next_obs": [0.0] * 3}, "fragments[1].next_obs"),
    ({"steps": [STEP, {**STEP, "obs": [0.0, 0.0, float("inf"), 0.0]}]}, "fragments[1].steps[1].obs[2]"),
    ({"steps": [STEP, {**STEP, "action": 2}]}, "fragments[1].steps[1].action"),
    ({"steps": [STEP, {**STEP, "reward": float("nan")}]}, "fragments[1].steps[1].reward"),
    ({"steps": [STEP, {**STEP, "reward": 1e7}]}, "fragments[1].steps[1].reward"),
    ({"steps": [STEP, {**STEP, "model_version": -2}]}, "fragments[1].steps[1].model_version"),
    ({"steps": []}, "fragments[1].steps"),
    ({"steps": [STEP] * 51}, "fragments[1].steps"),
    ({"episode": "no spaces"}, "fragments[1].episode"),
    ({"index": -1}, "fragments[1].index"),
    ({"index": 2**64}, "fragments[1].index"),  # (schemathesis found it a 500: no JSON writer takes it back)
])
def test_a_bad_fragment_is_a_422_naming_its_field_and_nothing_of_the_upload_is_stored(cartpole, change, field):
    before = len(logged(cartpole.settings.experience))
    body = {"fragments": [{**GOOD, "episode": f"good-{before}"}, {**GOOD, "episode": "f", **change}]}
    answer = httpx.post(f"{cartpole.url}/experience", content=json.dumps(body), headers={"content-type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert len(logged(cartpole.settings.experience)) == before  # the good fragment beside it is not stored either
    with RestClient(cartpole.url) as client:  # and the server goes on taking good ones
        assert client.upload([{**PLAYED, "episode": f"after-{before}"}])[0]["stored"]


def test_writing_takes_the_experience_token_and_a_read_token_may_not(exported_agents, tmp_path):
    models = exported_agents["CartPole-v1"][1]
    with ThreadServer(models, experience=tmp_path / "log", api_token="reader", experience_token="writer") as server:
        with pytest.raises(ApiError) as missing, RestClient(server.url) as client:
            client.upload([PLAYED])
        with pytest.raises(ApiError) as reader, RestClient(server.url, token="reader") as client:
            client.upload([PLAYED])
        assert (missing.value.status, reader.value.status) == (401, 403)
        assert logged(tmp_path / "log") == []
        with RestClient(server.url, token="writer") as client:
            assert client.upload([PLAYED])[0]["stored"]
            assert client.act([0.0] * 4).model_version == 1  # a client that may teach may act
        refusals = []
        for token in (None, "reader"):
            with pytest.raises(ApiError) as refused, GrpcClient(server.grpc_target, token=token) as client:
                client.upload([{**PLAYED, "episode": "by-grpc"}])
            refusals.append(refused.value.status)
        assert refusals == ["UNAUTHENTICATED", "PERMISSION_DENIED"]
        assert len(logged(tmp_path / "log")) == 1
        with GrpcClient(server.grpc_target, token="writer") as client:
            assert client.upload([{**PLAYED, "episode": "by-grpc"}])[0]["stored"]


def test_a_server_without_a_log_refuses_experience(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1]) as server, RestClient(server.url) as client:
        with pytest.raises(ApiError) as refused:
            client.upload([PLAYED])
        assert refused.value.status == 404 and "experience" in refused.value.detail
        with pytest.raises(ApiError) as refused, GrpcClient(server.grpc_target) as grpc:
            grpc.upload([PLAYED])
        assert refused.value.status == "UNIMPLEMENTED"


def test_writes_that_arrive_together_go_to_the_log_in_one_group_each_with_its_own_answer(tmp_path):
    """REST requests waiting on the log share the writer thread's appends: 17 concurrent writes (one a
    retry of another) go in a few groups, and each request is answered with its own fragment's position."""
    log = ExperienceLog(str(tmp_path))
    fragments = [Fragment(f"group-{i}", 0, np.zeros((2, 4), np.float32), np.zeros(1, np.int64), np.ones(1, np.float32),
                          np.ones(1, np.int64), False, False) for i in range(16)]

    async def concurrently():
        return await asyncio.gather(*(log.store_async([f]) for f in fragments), log.store_async([fragments[3]]))

    answers = asyncio.run(concurrently())
    log.close()
    assert answers == [[(i, True)] for i in range(16)] + [[(3, False)]]
    assert log.groups <= 4  # one append per request would be 17
    assert [decode(p).episode for _, _, p in SegmentReader(tmp_path).read(0).records] == [f.episode for f in fragments]
