"""`reverie serve`: the store, the app and uvicorn in one process (the gRPC server joins here)."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .settings import ServiceSettings
from .store import ModelStore

log = logging.getLogger("reverie.service")


def build_server(settings: ServiceSettings) -> tuple[uvicorn.Server, ModelStore]:
    store = ModelStore(settings.models, settings.poll_interval)
    app = create_app(store, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                            lifespan="off", timeout_graceful_shutdown=5)
    return uvicorn.Server(config), store


def serve(settings: ServiceSettings, server: uvicorn.Server | None = None, store: ModelStore | None = None) -> None:
    """Serve until SIGINT / SIGTERM; the newest bundle under `settings.models` is followed all along."""
    if server is None:
        server, store = build_server(settings)
    store.start()
    log.info("REST on http://%s:%d (models: %s%s)", settings.host, settings.port, settings.models,
             ", bearer token required" if settings.api_token else "")
    try:
        server.run()
    finally:
        store.stop()
