"""A small typed gRPC client with the REST client's interface, plus `stream()` for ActStream.

    client = GrpcClient("127.0.0.1:50051")
    step = client.act(obs, deterministic=True)
    with client.stream(deterministic=True) as stream:     # one bidirectional stream for a game loop
        step = stream.act(obs)
"""

from __future__ import annotations

import queue
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reverie.wire import SERVICE_NAME, agent_pb2, agent_pb2_grpc, from_tensor, message_dict, to_tensor

from .rest import Action, ApiError, Imagination, Trajectory, steps_of


def _error(err: grpc.RpcError) -> ApiError:
    detail = err.details() or ""
    field, sep, message = detail.partition(": ")
    return ApiError(err.code().name, message if sep else detail, field if sep else None)


def _actions(response: agent_pb2.ActResponse) -> list[Action]:
    actions = from_tensor(response.actions, "actions")
    values = from_tensor(response.values, "values")
    params = {k: from_tensor(getattr(response, k), k) for k in ("probs", "mean", "std") if response.HasField(k)}
    step = response.session_step if response.HasField("session_step") else None
    return [Action(int(a) if actions.ndim == 1 else a.tolist(), float(v), response.model_version,
                   **{k: p[i].tolist() for k, p in params.items()}, session_step=step)
            for i, (a, v) in enumerate(zip(actions, values))]


def _observations(obs) -> agent_pb2.Tensor:
    """Observations as a Tensor: frames (uint8) as their raw bytes, a quarter of float32's; else float32."""
    array = np.asarray(obs)
    return to_tensor(array if array.dtype == np.uint8 else array.astype(np.float32))


def _history(history) -> agent_pb2.History | None:
    """A `Recent` or an (observations, actions) pair as a History message."""
    steps = steps_of(history)
    if steps is None:
        return None
    observations, actions = steps
    if not observations:
        return agent_pb2.History()
    actions = np.asarray(actions)
    return agent_pb2.History(observations=_observations(np.stack(observations)),
                             actions=to_tensor(actions.astype(np.int64 if actions.dtype.kind in "iu" else np.float32)))


def _request(obs, deterministic: bool, seed: int | None, history=None, session: str | None = None,
             reset: bool = False, reward: float | None = None, terminated: bool = False,
             truncated: bool = False, evaluate: bool = False) -> agent_pb2.ActRequest:
    request = agent_pb2.ActRequest(obs=_observations(obs), deterministic=deterministic, history=_history(history),
                                   session=session or "", reset=reset, terminated=terminated, truncated=truncated,
                                   evaluate=evaluate)
    if seed is not None:
        request.seed = seed
    if reward is not None:
        request.reward = reward
    return request


class ActStream:
    """One ActStream call: each `act` sends one observation and waits for its action, in order."""

    def __init__(self, stub, metadata, deterministic: bool):
        self.deterministic = deterministic
        self.requests: queue.Queue = queue.Queue()
        self.responses = stub.ActStream(iter(self.requests.get, None), metadata=metadata)

    def act(self, obs, seed: int | None = None, reset: bool = False, reward: float | None = None,
            terminated: bool = False, truncated: bool = False, evaluate: bool = False) -> Action:
        """`reset` on an episode's first step: the stream keeps the episode's history itself. `reward`
        (and `terminated` / `truncated`): what followed the previous action, `obs` being what followed
        it; the server logs that transition for the trainer. `evaluate` with `reset`: an evaluation
        episode (one model version, deterministic, to the episode's end)."""
        self.requests.put(_request(obs, self.deterministic, seed, reset=reset, reward=reward, terminated=terminated,
                                   truncated=truncated, evaluate=evaluate))
        try:
            return _actions(next(self.responses))[0]
        except grpc.RpcError as err:
            raise _error(err) from None

    def close(self) -> None:
        self.requests.put(None)

    def __enter__(self) -> "ActStream":
        return self

    def __exit__(self, *_) -> None:
        self.close()


class GrpcClient:
    def __init__(self, target: str = "127.0.0.1:50051", token: str | None = None, timeout: float = 10.0,
                 retries: int = 2):
        """`retries`: how many more times a call that is safe to repeat is made after the server was
        UNAVAILABLE (a replica gone, a connection reset): every unary call but a session's `act`, which
        moves the session (and may log a reported step) and so is never made twice."""
        self.retries = retries
        self.channel = grpc.insecure_channel(target)
        self.stub = agent_pb2_grpc.AgentStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GrpcClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _call(self, method, request, safe: bool = True):
        for attempt in range(self.retries + 1 if safe else 1):
            try:
                # A retry waits for the channel to connect again (it backs off after a failure).
                return method(iter(request) if isinstance(request, list) else request,  # a stream, anew each time
                              metadata=self.metadata, timeout=self.timeout, wait_for_ready=attempt > 0)
            except grpc.RpcError as err:
                if not safe or attempt == self.retries or err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise _error(err) from None
                time.sleep(0.05 * 2**attempt)

    # ------------------------------------------------------------------ agent
    def act(self, obs, deterministic: bool = False, seed: int | None = None, history=None,
            session: str | None = None, reset: bool = False, reward: float | None = None,
            terminated: bool = False, truncated: bool = False, evaluate: bool = False) -> Action:
        request = _request(obs, deterministic, seed, history, session, reset, reward, terminated, truncated, evaluate)
        return _actions(self._call(self.stub.Act, request, safe=session is None))[0]

    def act_batch(self, observations, deterministic: bool = False, seed: int | None = None) -> list[Action]:
        return _actions(self._call(self.stub.Act, _request(np.stack(observations), deterministic, seed)))

    def stream(self, deterministic: bool = False) -> ActStream:
        return ActStream(self.stub, self.metadata, deterministic)

    def value(self, obs, history=None, session: str | None = None) -> tuple[float, int]:
        values, version = self.values([obs], history, session)
        return values[0], version

    def values(self, observations, history=None, session: str | None = None) -> tuple[list[float], int]:
        request = agent_pb2.ValueRequest(obs=_observations(np.stack(observations)),
                                         history=_history(history), session=session or "")
        response = self._call(self.stub.Value, request)
        return from_tensor(response.values, "values").tolist(), response.model_version

    def imagine(self, obs, horizon: int | None = None, samples: int = 1, deterministic: bool = False,
                seed: int | None = None, actions: list | None = None, history=None,
                session: str | None = None) -> Imagination:
        request = agent_pb2.ImagineRequest(obs=_observations(obs), horizon=horizon or 0,
                                           samples=samples, deterministic=deterministic, history=_history(history),
                                           session=session or "")
        if seed is not None:
            request.seed = seed
        if actions is not None:
            plan = np.asarray(actions)
            request.actions.CopyFrom(to_tensor(plan.astype(np.int64 if plan.dtype.kind in "iu" else np.float32)))
        r = self._call(self.stub.Imagine, request)
        fields = {k: from_tensor(getattr(r, k), k) for k in ("states", "actions", "rewards", "continues", "values",
                                                             "lambda_return", "disagreement")}
        trajectories = [Trajectory(fields["states"][i], fields["actions"][i].tolist(), fields["rewards"][i],
                                   fields["continues"][i], fields["values"][i], fields["lambda_return"][i], fields["disagreement"][i])
                        for i in range(len(fields["states"]))]
        return Imagination(r.model_version, r.horizon, trajectories)

    # ------------------------------------------------------------------ experience
    def upload(self, fragments) -> list[dict]:
        """RestClient.upload's fragments over one UploadExperience stream; the same answer."""
        def message(f: dict) -> agent_pb2.Fragment:
            actions = np.asarray(f["actions"])
            fragment = agent_pb2.Fragment(
                episode=f["episode"], index=f["index"], observations=_observations(np.stack(f["observations"])),
                actions=to_tensor(actions.astype(np.int64 if actions.dtype.kind in "iu" else np.float32)),
                rewards=to_tensor(np.asarray(f["rewards"], np.float32)),
                terminated=bool(f.get("terminated", False)), truncated=bool(f.get("truncated", False)))
            if "model_versions" in f:
                fragment.model_versions.CopyFrom(to_tensor(np.asarray(f["model_versions"], np.int64)))
            return fragment

        summary = self._call(self.stub.UploadExperience, [message(f) for f in fragments])  # a list: resent whole on a retry
        return [{"episode": s.episode, "index": s.index, "seq": s.seq, "stored": s.stored} for s in summary.fragments]

    # ------------------------------------------------------------------ status
    def model(self) -> dict:
        """What REST's GET /model answers, key for key."""
        return message_dict(self._call(self.stub.GetModel, agent_pb2.GetModelRequest()))

    def ready(self) -> bool:
        try:
            answer = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
        except grpc.RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gRPC service not ready after {timeout:.0f} s")
            time.sleep(0.2)
