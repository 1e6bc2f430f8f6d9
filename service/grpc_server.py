"""The gRPC front end: service `reverie.v1.Agent` over the same store and runtime as the REST app.

Standard health checking (NOT_SERVING until a bundle is loaded) and server reflection are on, so
stock tools (grpcurl, grpc_health_probe) work. Bad input is INVALID_ARGUMENT with a message that
names the field; an oversized message is RESOURCE_EXHAUSTED (grpc's own receive limit).
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from contextlib import contextmanager

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from reverie.errors import InputError
from reverie.history import Recent
from reverie.wire import SERVICE_NAME, agent_pb2, agent_pb2_grpc, from_tensor, to_tensor

from . import inputs
from .calls import ActCall, Calls, ImagineCall, Observations, ValueCall
from .experience import UploadedFragment
from .metrics import ServiceMetrics
from .requests import FAILURES, failure_status
from .sessions import Session
from .settings import ServiceSettings

log = logging.getLogger("reverie.service")


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """Wire <-> call types: each method reads its message into a call of `calls`, and its answer back."""

    def __init__(self, calls: Calls, metrics: ServiceMetrics):
        self.calls, self.metrics = calls, metrics

    @contextmanager
    def _call(self, name: str, context: grpc.ServicerContext):
        """Map our errors to gRPC status codes, and count the call."""
        started, code = time.perf_counter(), "OK"
        try:
            yield
        except tuple(FAILURES) as err:
            code = failure_status(err)[1]
            context.abort(grpc.StatusCode[code], str(err))
        finally:
            self.metrics.observe("grpc", name, code, time.perf_counter() - started)

    @staticmethod
    def _inputs(request) -> tuple[Observations, tuple | None]:
        """A request's observations and its History message (as observations and env actions, or None),
        decoded now like the rest of the message; the observations are checked against the model that
        the call is answered with (the reader returned)."""
        if not request.obs.dtype:
            raise InputError("obs", "required")
        array, history = from_tensor(request.obs, "obs"), None
        if request.HasField("history"):
            past = request.history
            history = (from_tensor(past.observations, "history.observations") if past.observations.dtype else (),
                       from_tensor(past.actions, "history.actions").tolist() if past.actions.dtype else [])

        def read(runtime, max_batch: int) -> tuple[np.ndarray, bool]:
            batch = inputs.check_observation_array(array, runtime.manifest.observation_space, "obs")
            inputs.check_batch_size(len(batch), "obs", max_batch)
            return batch, len(batch) > 1
        return read, history

    @staticmethod
    def _uploaded(message: agent_pb2.Fragment, field: str) -> UploadedFragment:
        """A Fragment message (tensors) for the call layer."""
        for part in ("observations", "actions", "rewards"):
            if not getattr(message, part).dtype:
                raise InputError(f"{field}.{part}", "required")
        rewards = from_tensor(message.rewards, f"{field}.rewards")
        versions = (from_tensor(message.model_versions, f"{field}.model_versions") if message.model_versions.dtype
                    else np.full(len(rewards) if rewards.ndim == 1 else 0, -1))
        return UploadedFragment(message.episode, message.index, from_tensor(message.observations, f"{field}.observations"),
                                from_tensor(message.actions, f"{field}.actions").tolist(), rewards, versions,
                                message.terminated, message.truncated,
                                lambda part, row: f"{field}.{part}" if row is None else f"{field}.{part}[{row}]")

    def _act(self, request: agent_pb2.ActRequest, context: grpc.ServicerContext,
             stream: Session | None = None) -> agent_pb2.ActResponse:
        """One Act; on a stream, `stream` is its own episode (the memory the stream keeps)."""
        observations, history = self._inputs(request)
        call = ActCall(observations, history, request.session or None, request.reset,
                       request.reward if request.HasField("reward") else None, request.terminated, request.truncated,
                       request.evaluate, request.deterministic, request.seed if request.HasField("seed") else None,
                       dict(context.invocation_metadata()).get("authorization") if request.HasField("reward") else None)
        answer = self.calls.act_blocking(call, stream)
        result = answer.result
        actions = np.asarray(result.actions, np.int64 if answer.discrete else np.float32)
        params = {k: to_tensor(v) for k, v in answer.details().items()}
        if answer.session_step is not None:
            params["session_step"] = answer.session_step
        return agent_pb2.ActResponse(actions=to_tensor(actions), values=to_tensor(result.values),
                                     model_version=answer.model_version, **params)

    def Act(self, request, context):
        with self._call("Act", context):
            return self._act(request, context)

    def ActStream(self, request_iterator, context):
        with self._call("ActStream", context):
            stream = None
            for request in request_iterator:  # each message takes the newest runtime: versions only move forward
                if stream is None:
                    manifest = self.calls.store.require().manifest
                    stream = Session(Recent(manifest.history_length), dtype=manifest.observation_space.dtype)
                yield self._act(request, context, stream)

    def UploadExperience(self, request_iterator, context):
        with self._call("UploadExperience", context):
            stored = self.calls.upload_blocking(  # checked as they come, stored together at the end
                self._uploaded(message, f"fragments[{i}]") for i, message in enumerate(request_iterator))
            return agent_pb2.UploadSummary(
                fragments=[agent_pb2.StoredFragment(episode=f.episode, index=f.index, seq=seq, stored=new)
                           for f, seq, new in stored],
                steps=sum(f.steps for f, _, new in stored if new))

    def Value(self, request, context):
        with self._call("Value", context):
            answer = self.calls.value(ValueCall(*self._inputs(request), request.session or None))
            return agent_pb2.ValueResponse(values=to_tensor(answer.values), model_version=answer.model_version)

    def Imagine(self, request, context):
        with self._call("Imagine", context):
            return self._imagine(request)

    def _imagine(self, request: agent_pb2.ImagineRequest) -> agent_pb2.ImagineResponse:
        observations, history = self._inputs(request)
        answer = self.calls.imagine(ImagineCall(
            lambda runtime: observations(runtime, 1)[0], request.horizon or None, request.samples or 1,
            request.deterministic, request.seed if request.HasField("seed") else None,
            from_tensor(request.actions, "actions").tolist() if request.actions.dtype else None,
            history, request.session or None))
        result = answer.imagination
        actions = np.asarray(result.actions, np.int64 if answer.runtime.discrete else np.float32)
        return agent_pb2.ImagineResponse(
            model_version=answer.runtime.version, horizon=result.horizon, states=to_tensor(result.states),
            actions=to_tensor(actions), rewards=to_tensor(result.rewards), continues=to_tensor(result.continues),
            values=to_tensor(result.values), lambda_return=to_tensor(result.lambda_return),
            disagreement=to_tensor(result.disagreement))

    def GetModel(self, request, context):
        with self._call("GetModel", context):
            return json_format.ParseDict(self.calls.model(), agent_pb2.ModelInfo())  # None: unset


class TokenInterceptor(grpc.ServerInterceptor):
    """`authorization: Bearer <token>` on every Agent call, the experience token on UploadExperience when
    the server has one; health and reflection stay open."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings

        def refusal(code: grpc.StatusCode, message: str):
            def deny(request, context):
                context.abort(code, message)
            return deny

        missing = refusal(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")
        self.deny_unary = grpc.unary_unary_rpc_method_handler(missing)
        self.deny_stream = grpc.stream_stream_rpc_method_handler(missing)
        self.deny_upload = grpc.stream_unary_rpc_method_handler(missing)
        self.deny_reader = grpc.stream_unary_rpc_method_handler(refusal(
            grpc.StatusCode.PERMISSION_DENIED, "authorization: this token may act but not write experience"))

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)
        authorization = dict(details.invocation_metadata).get("authorization")
        if details.method.endswith("/UploadExperience"):
            if self.settings.writer_accepts(authorization):
                return continuation(details)
            return self.deny_reader if authorization and self.settings.token_accepts(authorization) else self.deny_upload
        if self.settings.token_accepts(authorization):
            return continuation(details)
        return self.deny_stream if details.method.endswith("/ActStream") else self.deny_unary


def build_grpc_server(calls: Calls, metrics: ServiceMetrics) -> grpc.Server:
    settings, store = calls.settings, calls.store
    interceptors = [TokenInterceptor(settings)] if settings.api_token or settings.experience_token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                  ("grpc.max_send_message_length", 64 << 20)])
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(calls, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def set_health(runtime) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if runtime else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            health_servicer.set(service, status)

    set_health(store.current)
    store.on_swap.append(set_health)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"cannot bind gRPC to {settings.host}:{settings.grpc_port}")
    return server
