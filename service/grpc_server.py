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
from reverie.history import Recent

from .experience import ExperienceLog, NoExperience, check_tensor_fragment
from reverie.errors import InputError
from .requests import (FAILURES, evaluation, failure_status, finish_step, imagination_args, model_info, outcome, request_memory,
                       tensor_observations)
from .sessions import Session, Sessions
from .settings import ServiceSettings
from .store import ModelStore

log = logging.getLogger("reverie.service")


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(self, store: ModelStore, settings: ServiceSettings, metrics: ServiceMetrics, sessions: Sessions,
                 experience: ExperienceLog | None = None):
        self.store, self.settings, self.metrics, self.sessions = store, settings, metrics, sessions
        self.experience = experience

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
    def _history(request) -> tuple | None:
        """A request's History message as (observations, env actions), or None when it has none."""
        if not request.HasField("history"):
            return None
        history = request.history
        observations = from_tensor(history.observations, "history.observations") if history.observations.dtype else ()
        actions = from_tensor(history.actions, "history.actions").tolist() if history.actions.dtype else []
        return observations, actions

    def _memory(self, runtime, request, batched: bool, acting: bool):
        return request_memory(runtime, self.sessions, batched, self._history(request), request.session or None,
                              acting and request.reset, acting)

    def _act(self, request: agent_pb2.ActRequest, context: grpc.ServicerContext,
             stream: Session | None = None) -> agent_pb2.ActResponse:
        """One Act; on a stream, `stream` is its own episode (the memory the stream keeps)."""
        runtime = self.store.require()
        obs = tensor_observations(request.obs, runtime, self.settings.max_batch)
        seed = request.seed if request.HasField("seed") else None
        if stream is None:
            history, session = self._memory(runtime, request, len(obs) > 1, acting=True)
        else:
            if request.HasField("history") or request.session:
                raise InputError("history" if request.HasField("history") else "session",
                                 "an ActStream keeps its own history: send `reset` at an episode's start")
            if runtime.history_length and len(obs) > 1:
                raise InputError("obs", "an ActStream with memory takes one observation per message")
            if request.reset:
                stream.reset()
            history, session = Sessions.history(stream, runtime), stream
        may_write = lambda: self.settings.writer_accepts(dict(context.invocation_metadata()).get("authorization"))  # noqa: E731
        transition = outcome(session if len(obs) == 1 else None, request.reward if request.HasField("reward") else None,
                             request.terminated, request.truncated, obs, runtime, self.settings, may_write, self.experience)
        runtime = evaluation(session if len(obs) == 1 else None, request.evaluate, request.reset, runtime,
                             self.store)
        deterministic = request.deterministic or (session is not None and session.pinned is not None)
        result = runtime.act(obs, deterministic, seed, history)
        actions = np.asarray(result.actions, np.int64 if runtime.discrete else np.float32)
        params = {k: to_tensor(v) for k in ("probs", "mean", "std") if (v := getattr(result, k)) is not None}
        if transition is not None:
            self.experience.store([transition])  # durable before the answer
        if session is not None and len(obs) == 1:  # (a batch only ever reaches here on a stream without memory)
            step = (obs[0], result.agent_actions[0], runtime.version)
            params["session_step"] = finish_step(session, transition, lambda: session.record(*step) if session is stream
                                                 else self.sessions.record(request.session, session, *step))
        return agent_pb2.ActResponse(actions=to_tensor(actions), values=to_tensor(result.values),
                                     model_version=runtime.version, **params)

    def Act(self, request, context):
        with self._call("Act", context):
            return self._act(request, context)

    def ActStream(self, request_iterator, context):
        with self._call("ActStream", context):
            stream = None
            for request in request_iterator:  # each message takes the newest runtime: versions only move forward
                if stream is None:
                    manifest = self.store.require().manifest
                    stream = Session(Recent(manifest.history_length), dtype=manifest.observation_space.dtype)
                yield self._act(request, context, stream)

    def UploadExperience(self, request_iterator, context):
        with self._call("UploadExperience", context):
            if self.experience is None:
                raise NoExperience()
            fragments = []
            for i, message in enumerate(request_iterator):  # checked as they come; stored together at the end
                if i == self.settings.max_batch:
                    raise InputError("fragments", f"at most {self.settings.max_batch} fragments per call")
                fragments.append(check_tensor_fragment(message, self.store.require(), self.settings, f"fragments[{i}]"))
            if not fragments:
                raise InputError("fragments", "send at least one fragment")
            results = self.experience.store(fragments)
            return agent_pb2.UploadSummary(
                fragments=[agent_pb2.StoredFragment(episode=f.episode, index=f.index, seq=seq, stored=stored)
                           for f, (seq, stored) in zip(fragments, results)],
                steps=sum(f.steps for f, (_, stored) in zip(fragments, results) if stored))

    def Value(self, request, context):
        with self._call("Value", context):
            runtime = self.store.require()
            obs = tensor_observations(request.obs, runtime, self.settings.max_batch)
            history, _ = self._memory(runtime, request, len(obs) > 1, acting=False)
            values = runtime.value(obs, history)
            return agent_pb2.ValueResponse(values=to_tensor(values), model_version=runtime.version)

    def Imagine(self, request, context):
        with self._call("Imagine", context):
            return self._imagine(request)

    def _imagine(self, request: agent_pb2.ImagineRequest) -> agent_pb2.ImagineResponse:
        runtime = self.store.require()
        obs = tensor_observations(request.obs, runtime, 1)
        actions = from_tensor(request.actions, "actions").tolist() if request.actions.dtype else None
        horizon, samples, plan = imagination_args(runtime, self.settings, request.horizon or None, request.samples or 1, actions)
        history, _ = self._memory(runtime, request, False, acting=False)
        seed = request.seed if request.HasField("seed") else None
        result = runtime.imagine(obs, horizon, samples, request.deterministic, seed, plan, history)
        actions = np.asarray(result.actions, np.int64 if runtime.discrete else np.float32)
        return agent_pb2.ImagineResponse(
            model_version=runtime.version, horizon=horizon, states=to_tensor(result.states), actions=to_tensor(actions),
            rewards=to_tensor(result.rewards), continues=to_tensor(result.continues), values=to_tensor(result.values),
            lambda_return=to_tensor(result.lambda_return), disagreement=to_tensor(result.disagreement))

    def GetModel(self, request, context):
        with self._call("GetModel", context):
            return self._model()

    def _model(self) -> agent_pb2.ModelInfo:
        return json_format.ParseDict(model_info(self.store, self.settings), agent_pb2.ModelInfo())  # None: unset


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


def build_grpc_server(store: ModelStore, settings: ServiceSettings, metrics: ServiceMetrics, sessions: Sessions,
                      experience: ExperienceLog | None = None) -> grpc.Server:
    interceptors = [TokenInterceptor(settings)] if settings.api_token or settings.experience_token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="grpc"),
                         interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", settings.max_body_bytes),
                                  ("grpc.max_send_message_length", 64 << 20)])
    agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(store, settings, metrics, sessions, experience), server)
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
