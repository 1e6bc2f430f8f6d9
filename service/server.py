"""`reverie serve`: one process, one store, two front ends (REST on uvicorn, gRPC on grpcio)."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app, served
from .grpc_server import build_grpc_server
from .settings import ServiceSettings
from .store import ModelStore

log = logging.getLogger("reverie.service")


class Service:
    """The store, the REST server and the gRPC server of one process, started and stopped together."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = ModelStore(settings.models, settings.poll_interval, settings.follow)
        app = create_app(self.store, settings)
        self.experience = app.state.experience
        config = uvicorn.Config(served(app), host=settings.host, port=settings.port, access_log=False, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=5)
        self.http = uvicorn.Server(config)
        self.grpc = build_grpc_server(self.store, settings, app.state.metrics, app.state.sessions, self.experience)

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
            if self.experience is not None:
                self.experience.close()

    def stop(self) -> None:
        self.http.should_exit = True
