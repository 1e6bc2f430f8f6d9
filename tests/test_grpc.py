"""The gRPC front end against a real server: stock tools, status codes, parity with REST, hot reload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import ApiError, RestClient
from reverie.bundle import latest_bundle
from reverie.wire import agent_pb2, agent_pb2_grpc, to_tensor
from loopback import wait_until
from serving import ProcessServer, ThreadServer, publish_copy

OBS = [0.02, -0.3, 0.05, 0.4]
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))


def grpcurl(target: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess:
    """`grpcurl -plaintext [-d DATA] TARGET ARGS...` (list, describe SYMBOL, or a method to call)."""
    flags = ["-plaintext"] + (["-d", data] if data is not None else [])
    return subprocess.run([GRPCURL, *flags, target, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def cartpole(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], max_body_bytes=64 * 1024) as server:
        yield server


def test_grpcurl_lists_describes_and_calls_through_reflection(cartpole):
    listed = grpcurl(cartpole.grpc_target, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"reverie.v1.Agent", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = grpcurl(cartpole.grpc_target, "describe", "reverie.v1.Agent")
    assert "rpc ActStream ( stream .reverie.v1.ActRequest ) returns ( stream .reverie.v1.ActResponse )" in described.stdout
    model = grpcurl(cartpole.grpc_target, "reverie.v1.Agent/GetModel")
    assert model.returncode == 0, model.stderr
    info = json.loads(model.stdout)
    assert info["manifest"]["env_id"] == "CartPole-v1" and info["model_version"] == "1", sorted(info)
    assert info["manifest"]["observation_space"]["shape"] == ["4"] and info["manifest"]["graphs"]["act"]["file"] == "act.onnx"
    health = grpcurl(cartpole.grpc_target, "grpc.health.v1.Health/Check", data='{"service": "reverie.v1.Agent"}')
    assert json.loads(health.stdout)["status"] == "SERVING"


def test_health_is_not_serving_until_a_bundle_is_loaded(tmp_path, exported_agents):
    with ThreadServer(tmp_path / "export", poll_interval=0.05) as server:
        health = grpcurl(server.grpc_target, "grpc.health.v1.Health/Check", data='{"service": "reverie.v1.Agent"}')
        assert json.loads(health.stdout)["status"] == "NOT_SERVING"
        with GrpcClient(server.grpc_target) as client:
            with pytest.raises(ApiError) as err:
                client.act(OBS)
            assert err.value.status == "UNAVAILABLE"
            publish_copy(latest_bundle(exported_agents["CartPole-v1"][1]), tmp_path / "export")
            client.wait_ready(10)
            assert client.act(OBS).model_version == 1


def test_grpc_and_rest_give_the_same_answers(cartpole):
    with GrpcClient(cartpole.grpc_target) as g, RestClient(cartpole.url) as r:
        for seed in range(5):
            a, b = g.act(OBS, seed=seed), r.act(OBS, seed=seed)
            assert (a.action, a.model_version) == (b.action, b.model_version)
            assert a.value == pytest.approx(b.value, abs=1e-6) and a.probs == pytest.approx(b.probs, abs=1e-6)
        assert [s.action for s in g.act_batch([OBS, OBS], deterministic=True)] == [s.action for s in r.act_batch([OBS, OBS], deterministic=True)]
        assert g.value(OBS)[0] == pytest.approx(r.value(OBS)[0], abs=1e-6)
        gi, ri = g.imagine(OBS, horizon=15, samples=4, seed=3), r.imagine(OBS, horizon=15, samples=4, seed=3)
        assert gi.horizon == ri.horizon == 15
        for x, y in zip(gi.trajectories, ri.trajectories):
            assert x.actions == y.actions
            np.testing.assert_allclose(x.lambda_return, y.lambda_return, atol=1e-5)
        plan = g.imagine(OBS, actions=[1, 0, 1])
        assert plan.horizon == 3 and plan.trajectories[0].actions == [1, 0, 1]
        with g.stream(deterministic=True) as stream:
            assert [stream.act(OBS).action for _ in range(3)] == [g.act(OBS, deterministic=True).action] * 3
        rest_model = r.model()
        space = rest_model["manifest"]["action_space"]  # a repeated field has no null: [] where REST says null
        space.update({k: space[k] if space[k] is not None else [] for k in ("shape", "low", "high")})
        rest_model["manifest"]["obs_indices"] = rest_model["manifest"]["obs_indices"] or []
        assert g.model() == rest_model  # GetModel is /model, typed: every key, nested ones too


def _tensor(data: bytes, shape, dtype: str) -> agent_pb2.Tensor:
    return agent_pb2.Tensor(data=data, shape=shape, dtype=dtype)


BAD = [
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.zeros(3, np.float32))), "INVALID_ARGUMENT", "obs"),
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.zeros((2, 5), np.float32))), "INVALID_ARGUMENT", "obs"),
    ("Act", agent_pb2.ActRequest(obs=_tensor(b"\0" * 4, [4], "bool")), "INVALID_ARGUMENT", "obs.dtype"),
    ("Act", agent_pb2.ActRequest(obs=_tensor(b"\0" * 15, [4], "float32")), "INVALID_ARGUMENT", "obs.data"),
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.array([0.1, np.nan, 0, 0], np.float32))), "INVALID_ARGUMENT", "obs[1]"),
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.array([[0.1, 0, 0, 0], [0, 0, np.inf, 0]], np.float32))), "INVALID_ARGUMENT", "obs[1][2]"),
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.array([0.1, 1e300, 0, 0], np.float64))), "INVALID_ARGUMENT", "obs[1]"),
    ("Act", agent_pb2.ActRequest(), "INVALID_ARGUMENT", "obs"),
    ("Value", agent_pb2.ValueRequest(obs=_tensor(b"\0" * 16, [2, 2], "float32")), "INVALID_ARGUMENT", "obs"),
    ("Imagine", agent_pb2.ImagineRequest(obs=to_tensor(np.zeros(4, np.float32)), horizon=65), "INVALID_ARGUMENT", "horizon"),
    ("Imagine", agent_pb2.ImagineRequest(obs=to_tensor(np.zeros(4, np.float32)), samples=1000), "INVALID_ARGUMENT", "samples"),
    ("Imagine", agent_pb2.ImagineRequest(obs=to_tensor(np.zeros(4, np.float32)), actions=to_tensor(np.array([0, 2]))), "INVALID_ARGUMENT", "actions[1]"),
    ("Imagine", agent_pb2.ImagineRequest(obs=to_tensor(np.zeros(4, np.float32)), horizon=2, actions=to_tensor(np.array([0, 1, 1]))), "INVALID_ARGUMENT", "horizon"),
    ("Act", agent_pb2.ActRequest(obs=to_tensor(np.zeros((5000, 4), np.float32))), "RESOURCE_EXHAUSTED", None),
]


def test_bad_input_gets_invalid_argument_or_resource_exhausted_and_the_server_keeps_serving(cartpole):
    channel = grpc.insecure_channel(cartpole.grpc_target)
    stub = agent_pb2_grpc.AgentStub(channel)
    before = stub.Act(agent_pb2.ActRequest(obs=to_tensor(np.asarray(OBS, np.float32)), deterministic=True))
    for method, request, code, field in BAD:
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, method)(request, timeout=10)
        assert err.value.code().name == code, (method, request, err.value.details())
        if field is not None:
            assert err.value.details().startswith(f"{field}: "), err.value.details()
    # A bad message in a stream ends that stream with INVALID_ARGUMENT, after the good ones were answered.
    good = agent_pb2.ActRequest(obs=to_tensor(np.asarray(OBS, np.float32)))
    bad = agent_pb2.ActRequest(obs=to_tensor(np.zeros(3, np.float32)))
    answers = stub.ActStream(iter([good, good, bad, good]), timeout=10)
    assert next(answers).model_version == next(answers).model_version == 1
    with pytest.raises(grpc.RpcError) as err:
        next(answers)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = stub.Act(agent_pb2.ActRequest(obs=to_tensor(np.asarray(OBS, np.float32)), deterministic=True))
    assert after == before
    channel.close()


def test_bearer_token_over_grpc(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], api_token="s3cret") as server:
        for token in (None, "wrong"):
            with GrpcClient(server.grpc_target, token=token) as client, pytest.raises(ApiError) as err:
                client.act(OBS)
            assert err.value.status == "UNAUTHENTICATED"
            with GrpcClient(server.grpc_target, token=token) as client, pytest.raises(ApiError) as err:
                with client.stream() as stream:
                    stream.act(OBS)
            assert err.value.status == "UNAUTHENTICATED"
        with GrpcClient(server.grpc_target) as client:
            assert client.ready()  # health stays open
        with GrpcClient(server.grpc_target, token="s3cret") as client:
            assert client.act(OBS).model_version == 1


@pytest.mark.slow
def test_hot_reload_under_grpc_load(tmp_path, exported_agents):
    """20+ versions published while Act and ActStream clients run: no failed call, streams never go back."""
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    export_dir = tmp_path / "export"
    publish_copy(source, export_dir)
    with ProcessServer(export_dir, poll_interval=0.05) as server:
        stop = threading.Event()
        unary: list[int] = []
        streams: list[list[int]] = [[], []]
        failures: list[str] = []

        def unary_loop() -> None:
            with GrpcClient(server.grpc_target) as client:
                while not stop.is_set():
                    try:
                        unary.append(client.act(OBS, seed=1).model_version)
                    except Exception as err:
                        failures.append(repr(err))

        def stream_loop(seen: list[int]) -> None:
            with GrpcClient(server.grpc_target) as client, client.stream() as stream:
                while not stop.is_set():
                    try:
                        seen.append(stream.act(OBS).model_version)
                    except Exception as err:
                        failures.append(repr(err))
                        return

        threads = [threading.Thread(target=unary_loop)] + [threading.Thread(target=stream_loop, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        wait_until(lambda: unary and all(streams), 10, "clients answered")
        for version in range(2, 22):
            publish_copy(source, export_dir)
            wait_until(lambda: (streams[0][-1:] or [0])[0] >= version, 10, f"version {version} on the stream")
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    for seen in streams + [unary]:
        assert all(a <= b for a, b in zip(seen, seen[1:])), "versions went backwards"
    assert set(streams[0]) == set(range(1, 22)), "one stream saw every version, 21 in all"
    assert streams[1][-1] == unary[-1] == 21
