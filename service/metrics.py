"""Prometheus metrics for one app: request counts and latency per endpoint, and the store's state.

Each app owns its registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .sessions import Sessions
from .store import ModelStore

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StoreCollector:
    """Read at scrape time, so the store needs no metrics code of its own."""

    def __init__(self, store: ModelStore, sessions: Sessions | None):
        self.store, self.sessions = store, sessions

    def collect(self):
        runtime = self.store.current
        version = GaugeMetricFamily("reverie_model_version", "Model version being served (0: none yet)")
        version.add_metric([], runtime.version if runtime else 0)
        step = GaugeMetricFamily("reverie_model_training_step", "Env step at which the served bundle was exported")
        step.add_metric([], runtime.manifest.training_step if runtime else 0)
        reloads = CounterMetricFamily("reverie_model_reloads", "Bundles loaded and swapped in")
        reloads.add_metric([], self.store.reloads)
        refused = CounterMetricFamily("reverie_model_refusals", "Bundles refused (checksum, truncated graph, ...)")
        refused.add_metric([], self.store.refusals)
        yield from (version, step, reloads, refused)
        if self.sessions is not None:
            count = GaugeMetricFamily("reverie_sessions", "Sessions kept (REST `session`), unexpired")
            count.add_metric([], len(self.sessions))
            yield count
            if self.sessions.nbytes is not None:  # shared sessions are held by Redis, not here
                held = GaugeMetricFamily("reverie_session_bytes", "Bytes the sessions may hold (each counted at a full history)")
                held.add_metric([], self.sessions.nbytes)
                yield held


class ServiceMetrics:
    def __init__(self, store: ModelStore, sessions: Sessions | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter("reverie_requests", "Requests by endpoint and status",
                                ["transport", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("reverie_request_seconds", "Request latency by endpoint",
                                 ["transport", "endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.act_requests_per_call = Histogram("reverie_act_requests_per_call", "/act requests (REST or gRPC) answered by one act-graph call",
                                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.registry.register(_StoreCollector(store, sessions))

        self._children: dict = {}  # labels() resolved once per label set: it sits on every request's path

    def observe(self, transport: str, endpoint: str, status: str, seconds: float) -> None:
        key = (transport, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(*key), self.latency.labels(transport, endpoint))
        children[0].inc()
        children[1].observe(seconds)
