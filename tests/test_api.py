"""The REST API against a real server on a loopback port: forms, bad input, limits, auth, readiness."""

from __future__ import annotations

import json
import socket

import httpx
import numpy as np
import pytest

from reverie.clients.rest import ApiError, RestClient
from reverie.bundle import latest_bundle
from loopback import wait_until
from serving import ThreadServer, publish_copy

OBS = [0.02, -0.3, 0.05, 0.4]


@pytest.fixture(scope="module")
def cartpole(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], max_batch=8, max_body_bytes=64 * 1024) as server:
        yield server


@pytest.fixture(scope="module")
def pendulum(exported_agents):
    with ThreadServer(exported_agents["Pendulum-v1"][1]) as server:
        yield server


def test_act_value_single_and_batched_forms(cartpole):
    with RestClient(cartpole.url) as client:
        step = client.act(OBS, deterministic=True)
        assert step.action in (0, 1) and step.model_version == 1 and len(step.probs) == 2
        assert step.action == int(np.argmax(step.probs))
        batch = client.act_batch([OBS, [0.0, 0.0, 0.0, 0.0], OBS], deterministic=True)
        assert [b.action for b in batch][0] == batch[2].action == step.action
        assert batch[0].value == pytest.approx(step.value, abs=1e-6)
        value, version = client.value(OBS)
        assert value == pytest.approx(step.value, abs=1e-6) and version == 1
        values, _ = client.values([OBS, OBS])
        assert values == pytest.approx([value, value], abs=1e-6)
        assert client.act(OBS, seed=5).action == client.act(OBS, seed=5).action


def test_box_actions_come_in_env_units_with_their_distribution(pendulum):
    with RestClient(pendulum.url) as client:
        for seed in range(20):
            step = client.act([0.3, 0.9, -1.0], seed=seed)
            assert len(step.action) == 1 and -2.0 <= step.action[0] <= 2.0
            assert len(step.mean) == 1 and step.std[0] > 0


def test_imagine_get_post_plan_and_png(cartpole):
    with RestClient(cartpole.url) as client:
        manifest = client.model()["manifest"]
        answer = httpx.get(f"{cartpole.url}/imagine", params={"obs": ",".join(map(str, OBS)), "samples": 3, "seed": 2}).json()
        assert answer["horizon"] == manifest["default_horizon"] and len(answer["trajectories"]) == 3
        t = answer["trajectories"][0]
        h = answer["horizon"]
        assert (len(t["states"]), len(t["actions"]), len(t["rewards"]), len(t["continues"]), len(t["values"]),
                len(t["lambda_return"])) == (h + 1, h, h, h, h + 1, h)
        assert len(t["states"][0]) == manifest["state_size"]
        posted = client.imagine(OBS, samples=3, seed=2)
        assert [tr.actions for tr in posted.trajectories] == [tr["actions"] for tr in answer["trajectories"]]
        plan = client.imagine(OBS, actions=[1, 1, 0, 1], samples=2)
        assert plan.horizon == 4 and all(tr.actions == [1, 1, 0, 1] for tr in plan.trajectories)
        np.testing.assert_allclose(plan.trajectories[0].rewards, plan.trajectories[1].rewards)
        assert client.imagine(OBS, horizon=4, actions=[1, 1, 0, 1]).horizon == 4  # an agreeing horizon is fine
        png = client.preview(OBS, horizon=10, samples=4)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        response = httpx.get(f"{cartpole.url}/imagine", params={"obs": ",".join(map(str, OBS)), "format": "png"})
        assert response.headers["content-type"] == "image/png" and response.headers["x-model-version"] == "1"


# (method, path, JSON body or raw bytes or query, expected status, expected field)
BAD = [
    ("POST", "/act", {"obs": [0.1, 0.2, 0.3]}, 422, "obs"),
    ("POST", "/act", {"obs": [0.1, True, 0.3, 0.4]}, 422, "obs[1]"),
    ("POST", "/act", {"obs": [0.1, "boom", 0.3, 0.4]}, 422, "obs[1]"),
    ("POST", "/act", b'{"obs": [0.1, NaN, 0.3, 0.4]}', 422, "obs[1]"),
    ("POST", "/act", b'{"obs": [0.1, 0.2, Infinity, 0.4]}', 422, "obs[2]"),
    ("POST", "/act", b'{"obs": [0.1, 0.2, 0.3, -1e39]}', 422, "obs[3]"),
    ("POST", "/act", {"obs": [[0.1], 0.2, 0.3, 0.4]}, 422, "obs[0]"),
    ("POST", "/act", {"obs": None}, 422, "obs"),
    ("POST", "/act", {"obs": OBS, "observations": [OBS]}, 422, "obs"),
    ("POST", "/act", {}, 422, "obs"),
    ("POST", "/act", {"observations": []}, 422, "observations"),
    ("POST", "/act", {"observations": [OBS] * 9}, 422, "observations"),
    ("POST", "/act", {"observations": [OBS, [0.1, 0.2, "x", 0.4]]}, 422, "observations[1][2]"),
    ("POST", "/act", b'{"observations": [[0.1, 0.2, 0.3, 0.4], [0.1, NaN, 0.3, 0.4]]}', 422, "observations[1][1]"),
    ("POST", "/act", {"obs": OBS, "deterministic": "yes"}, 422, "deterministic"),
    ("POST", "/act", {"obs": OBS, "seed": -1}, 422, "seed"),
    ("POST", "/act", {"obs": OBS, "seed": 1.5}, 422, "seed"),
    ("POST", "/act", {"obs": OBS, "seed": 2**40}, 422, "seed"),
    ("POST", "/act", {"obs": OBS, "temperature": 2}, 422, "temperature"),
    ("POST", "/act", b'{"obs": [0.1, 0.2', 422, "body"),
    ("POST", "/act", b"[1, 2, 3]", 422, "body"),
    ("POST", "/act", b"\xff\xfe\x00garbage", 422, "body"),
    ("POST", "/value", b'{"obs": [NaN, 0.2, 0.3, 0.4]}', 422, "obs[0]"),
    ("POST", "/value", {"obs": [1, 2, 3, False]}, 422, "obs[3]"),
    ("GET", "/imagine", {"obs": "0.1,nan,0.3,0.4"}, 422, "obs[1]"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3"}, 422, "obs"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,1e99"}, 422, "obs[3]"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,0.4", "horizon": 0}, 422, "horizon"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,0.4", "horizon": 65}, 422, "horizon"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,0.4", "samples": 0}, 422, "samples"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,0.4", "samples": 65}, 422, "samples"),
    ("GET", "/imagine", {"obs": "0.1,0.2,0.3,0.4", "format": "gif"}, 422, "format"),
    ("POST", "/imagine", {"obs": OBS, "actions": [0, 2]}, 422, "actions[1]"),
    ("POST", "/imagine", {"obs": OBS, "actions": [0, True]}, 422, "actions[1]"),
    ("POST", "/imagine", {"obs": OBS, "actions": [0, 0.5]}, 422, "actions[1]"),
    ("POST", "/imagine", {"obs": OBS, "actions": []}, 422, "actions"),
    ("POST", "/imagine", {"obs": OBS, "actions": [0, 1, 1], "horizon": 4}, 422, "horizon"),
    ("POST", "/imagine", {"obs": OBS, "actions": [1] * 65}, 422, "actions"),
    ("POST", "/imagine", {"obs": OBS, "horizon": 1000}, 422, "horizon"),
    ("POST", "/imagine", {"obs": OBS, "samples": 1000}, 422, "samples"),
    ("POST", "/imagine", b'{"obs": [0.1, 0.2, 0.3, NaN]}', 422, "obs[3]"),
]


def refuse_constant(name):
    raise AssertionError(f"{name} in a JSON answer")


def send(url: str, method: str, path: str, payload) -> httpx.Response:
    if method == "GET":
        return httpx.get(url + path, params=payload)
    if isinstance(payload, bytes):
        return httpx.post(url + path, content=payload, headers={"content-type": "application/json"})
    return httpx.post(url + path, json=payload)


def test_bad_input_is_a_4xx_naming_the_field_and_changes_nothing(cartpole):
    with RestClient(cartpole.url) as client:
        before = client.act(OBS, deterministic=True)
        metrics_before = httpx.get(f"{cartpole.url}/metrics").text
        for method, path, payload, status, field in BAD:
            response = send(cartpole.url, method, path, payload)
            assert response.status_code == status, (method, path, payload, response.text)
            body = response.json()
            assert body["field"] == field and body["detail"], (payload, body)
            json.loads(response.text, parse_constant=refuse_constant)  # strict JSON: no NaN echoed back
            assert not any(echo in response.text for echo in ("boom", "garbage", "e39", "e99", "temperature\":"))
        after = client.act(OBS, deterministic=True)
        assert (after.action, after.value, after.model_version) == (before.action, before.value, before.model_version)
        assert cartpole.store.current.version == 1 and cartpole.store.refusals == 0
    assert "reverie_model_version 1.0" in metrics_before
    assert 'endpoint="/act",status="422",transport="http"' in httpx.get(f"{cartpole.url}/metrics").text


def test_box_plans_are_checked_against_the_bounds(pendulum):
    cases = [({"obs": [0.3, 0.9, -1.0], "actions": [[3.0]]}, "actions[0][0]"),
             ({"obs": [0.3, 0.9, -1.0], "actions": [[0.1, 0.2]]}, "actions[0]"),
             ({"obs": [0.3, 0.9, -1.0], "actions": [0.5]}, "actions[0]")]
    for payload, field in cases:
        response = httpx.post(f"{pendulum.url}/imagine", json=payload)
        assert response.status_code == 422 and response.json()["field"] == field
    ok = httpx.post(f"{pendulum.url}/imagine", json={"obs": [0.3, 0.9, -1.0], "actions": [[2.0], [-2.0], [0.5]]})
    assert ok.status_code == 200 and ok.json()["trajectories"][0]["actions"] == [[2.0], [-2.0], [0.5]]


def test_other_methods_on_the_hot_paths_are_405_with_allow(cartpole):
    """The hot POST routes leave every other method to FastAPI: 405, our error shape, and an Allow
    header that lists both /imagine routes."""
    for method, path, allow in (("GET", "/act", "POST"), ("PUT", "/imagine", "GET, POST"), ("DELETE", "/value", "POST")):
        response = httpx.request(method, f"{cartpole.url}{path}", json={"obs": OBS})
        assert response.status_code == 405 and response.headers["allow"] == allow
        assert response.json() == {"detail": "Method Not Allowed", "field": None}


def test_an_oversized_body_is_refused_from_its_content_length_before_it_is_read(cartpole):
    big = {"observations": [OBS] * 8, "pad": "x" * 70_000}
    response = httpx.post(f"{cartpole.url}/act", json=big)
    assert response.status_code == 413 and response.json()["field"] == "body"
    # Announce a gigabyte and send nothing: the answer comes at once, so the body was never awaited.
    port = int(cartpole.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 413")
    # A chunked body (no Content-Length) is cut off once it passes the limit.
    chunks = (b'{"obs": [' + b"0.0, " * 2000 + b"0.0]}" for _ in range(10))
    response = httpx.post(f"{cartpole.url}/act", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_bearer_token_guards_everything_but_health(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], api_token="s3cret") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            response = httpx.post(f"{server.url}/act", json={"obs": OBS}, headers=headers)
            assert response.status_code == 401 and response.json()["field"] == "Authorization"
            assert response.headers["www-authenticate"] == "Bearer" and "s3cret" not in response.text
        for path in ("/model", "/metrics"):
            assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        with RestClient(server.url, token="s3cret") as client:
            assert client.act(OBS).model_version == 1
        with RestClient(server.url, token="nope") as client, pytest.raises(ApiError) as err:
            client.act(OBS)
        assert err.value.status == 401


def test_readyz_is_503_until_the_first_bundle_and_then_serves_it(tmp_path, exported_agents):
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    with ThreadServer(tmp_path / "export", poll_interval=0.05) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        response = httpx.get(f"{server.url}/readyz")
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert httpx.post(f"{server.url}/act", json={"obs": OBS}).status_code == 503
        publish_copy(source, tmp_path / "export")
        wait_until(lambda: httpx.get(f"{server.url}/readyz").status_code == 200, 10, "ready")
        with RestClient(server.url) as client:
            assert client.act(OBS).model_version == 1
            info = client.model()
            assert info["manifest"]["env_id"] == "CartPole-v1" and info["training"] is None and info["reloads"] == 1
