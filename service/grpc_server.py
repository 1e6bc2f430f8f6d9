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

from reverie.wire import SERVICE_NAME, agent_pb2, agent_pb2_grpc, from_tensor, to_tensor

from .metrics import ServiceMetrics
from .requests import FAILURES, failure_status, imagination_args, model_info, tensor_observations
from .settings import ServiceSettings
from .store import ModelStore

log = logging.getLogger("reverie.service")


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, store: ModelStore, settings: ServiceSettings, metrics: ServiceMetrics):
        self.store, self.settings, self.metrics = store, settings, metrics

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

    def _act(self, request: agent_pb2.ActRequest) -> agent_pb2.ActResponse:
        runtime = self.store.require()
        obs = tensor_observations(request.obs, runtime, self.settings.max_batch)
        seed = request.seed if request.HasField("seed") else None
        result = runtime.act(obs, request.deterministic, seed)
        actions = np.asarray(result.actions, np.int64 if runtime.discrete else np.float32)
        params = {k: to_tensor(v) for k in ("probs", "mean", "std") if (v := getattr(result, k)) is not None}
        return agent_pb2.ActResponse(actions=to_tensor(actions), values=to_tensor(result.values),
                                     model_version=runtime.version, **params)

    def Act(self, request, context):
        with self._call("Act", context):
            return self._act(request)

    def ActStream(self, request_iterator, context):
        with self._call("ActStream", context):
            for request in request_iterator:  # each message takes the newest runtime: versions only move forward
                yield self._act(request)

    def Value(self, request, context):
        with self._call("Value", context):
            runtime = self.store.require()
            values = runtime.value(tensor_observations(request.obs, runtime, self.settings.max_batch))
            return agent_pb2.ValueResponse(values=to_tensor(values), model_version=runtime.version)

    def Imagine(self, request, context):
        with self._call("Imagine", context):
            return self._imagine(request)

    def _imagine(self, request: agent_pb2.ImagineRequest) -> agent_pb2.ImagineResponse:
        runtime = self.store.require()
        obs = tensor_observations(request.obs, runtime, 1)
        actions = from_tensor(request.actions, "actions").tolist() if request.actions.dtype else None
        horizon, samples, plan = imagination_args(runtime, self.settings, request.horizon or None, request.samples or 1, actions)
        seed = request.seed if request.HasField("seed") else None
        result = runtime.imagine(obs, horizon, samples, request.deterministic, seed, plan)
        actions = np.asarray(result.actions, np.int64 if runtime.discrete else np.float32)
        return agent_pb2.ImagineResponse(
            model_version=runtime.version, horizon=horizon, states=to_tensor(result.states), actions=to_tensor(actions),
            rewards=to_tensor(result.rewards), continues=to_tensor(result.continues), values=to_tensor(result.values),
            lambda_return=to_tensor(result.lambda_return))

    def GetModel(self, request, context):
        with self._call("GetModel", context):
            return self._model()

    def _model(self) -> agent_pb2.ModelInfo:
        return json_format.ParseDict(model_info(self.store, self.settings), agent_pb2.ModelInfo())  # None: unset


class TokenInterceptor(grpc.ServerInterceptor):
    """`authorization: Bearer <token>` on every Agent call; health and reflection stay open."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong bearer token")

        self.deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self.deny_stream = grpc.stream_stream_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if not details.method.startswith(f"/{SERVICE_NAME}/"):
            return continuation(details)
        if self.settings.token_accepts(dict(details.invocation_metadata).get("authorization")):
            return continuation(details)
        return self.deny_stream if details.method.endswith("/ActStream") else self.deny_unary


def build_grpc_server(store: ModelStore, settings: ServiceSettings, metrics: ServiceMetrics) -> grpc.Server:
    interceptors = [TokenInterceptor(settings)] if settings.api_token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                  ("grpc.max_send_message_length", 64 << 20)])
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, settings, metrics), server)
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
