"""`reverie serve`: one process, one store, two front ends (REST on uvicorn, gRPC on grpcio)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import uvicorn

from reverie.objectstore import Mirror, is_store_url

from .app import create_app, served
from .batching import ActBatcher
from .calls import Calls
from .experience import ExperienceLog
from .grpc_server import build_grpc_server
from .metrics import ServiceMetrics
from .sessions import Sessions, SharedSessions
from .settings import ServiceSettings
from .store import ModelStore

log = logging.getLogger("reverie.service")


def build_calls(settings: ServiceSettings) -> tuple[Calls, ServiceMetrics]:
    """The process's objects, built once: the store, sessions, metrics, batcher and experience log, and
    the call layer over them that both front ends use."""
    store = model_store(settings)
    sessions = (Sessions(int(settings.session_memory_mb * 2**20), settings.session_ttl_s) if settings.sessions is None
                else SharedSessions(settings.sessions, settings.session_ttl_s, store))
    metrics = ServiceMetrics(store, sessions)
    experience = ExperienceLog(settings.experience) if settings.experience is not None else None
    return Calls(store, settings, sessions, ActBatcher(metrics.act_requests_per_call), experience), metrics


def model_store(settings: ServiceSettings) -> ModelStore:
    """The store of `--models`: a local path, or a local mirror of s3://... (checked now: a store that
    cannot be listed stops the start with its reason)."""
    if not is_store_url(settings.models):
        return ModelStore(settings.models, settings.poll_interval, settings.follow)
    mirror = Mirror(settings.models, Path(tempfile.mkdtemp(prefix="reverie-models-")))
    mirror.check()
    return ModelStore(mirror.folder, settings.poll_interval, settings.follow, mirror)


class Service:
    """One process's objects, built once (store, sessions, metrics, batcher, experience log, and the call
    layer over them), and its two front ends over that call layer, started and stopped together."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.calls, metrics = build_calls(settings)
        self.store, self.experience = self.calls.store, self.calls.experience
        config = uvicorn.Config(served(create_app(self.calls, metrics)), host=settings.host, port=settings.port,
                                access_log=False, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
        self.http = uvicorn.Server(config)
        self.grpc = build_grpc_server(self.calls, metrics)

    def run(self) -> None:
        """Serve until SIGINT / SIGTERM (or `stop()`); the newest bundle is followed all along."""
        self.store.start()
        self.grpc.start()
        s = self.settings
        log.info("REST on http://%s:%d, gRPC on %s:%d (models: %s%s)", s.host, s.port, s.host, s.grpc_port, s.models,
                 ", bearer token required" if s.api_token else "")
        log.info("the live page: http://%s:%d/", s.host, s.port)
        try:
            self.http.run()
        finally:
            self.grpc.stop(grace=2).wait()
            self.store.stop()
            if self.store.mirror is not None:  # a copy of the object store, made for this process
                shutil.rmtree(self.store.models, ignore_errors=True)
            if self.experience is not None:
                self.experience.close()

    def stop(self) -> None:
        self.http.should_exit = True
