"""Follow the newest complete bundle: verify, warm up, swap atomically, keep the last good one.

A request takes `store.current` once and uses that runtime to the end, so a swap never splits a
request between two versions and every answer names the version that computed it. Versions only
move forward; a bundle that fails to load is logged, remembered and skipped until it changes.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from reverie.bundle import BundleError, latest_bundle, version_dir, versions
from reverie.objectstore import Mirror

from .runtime import Runtime

log = logging.getLogger("reverie.service")


class NotReady(RuntimeError):
    """No bundle has been loaded yet."""


class ModelStore:
    def __init__(self, models: Path, poll_interval: float = 1.0, follow: str = "latest", mirror: Mirror | None = None):
        """`mirror`: the object store `models` is a local copy of, synced before each poll."""
        self.models = Path(models)
        self.mirror = mirror
        self.follow = follow
        self.poll_interval = poll_interval
        self.current: Runtime | None = None
        # Following BEST: the newest version too, loaded beside it, for evaluation sessions to evaluate
        # (a version that nobody evaluates could never become BEST).
        self.newest: Runtime | None = None
        self.loaded_at: float | None = None
        self.reloads = 0
        self.refused: dict[Path, tuple[float, str]] = {}  # bundle -> (manifest mtime, reason)
        self.refusals = 0
        self.on_swap: list = []  # callables taking the new Runtime (the gRPC health status)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def require(self) -> Runtime:
        runtime = self.current
        if runtime is None:
            raise NotReady(f"no bundle loaded yet from {self.models}")
        return runtime

    def evaluated(self) -> Runtime:
        """The runtime an evaluation session pins: the newest version (the served one when following LATEST)."""
        runtime = self.require()
        newest = self.newest
        return newest if newest is not None and newest.version > runtime.version else runtime

    def candidates(self) -> list[Path]:
        """The newest bundle; before anything is served, older versions too, newest first."""
        newest = latest_bundle(self.models, self.follow)
        if newest is None:
            return []
        if self.current is not None or newest == self.models:
            return [newest]
        export_dir = newest.parent
        return [newest] + [version_dir(export_dir, v) for v in reversed(versions(export_dir))
                           if version_dir(export_dir, v) != newest]

    def poll(self) -> bool:
        """Load the newest loadable bundle if it is newer than the one served; True when a swap happened."""
        if self.mirror is not None:
            self.mirror.sync()
        swapped = any(self._try(bundle) for bundle in self.candidates())
        if self.follow != "latest" and self.current is not None:
            self._try_newest()
        return swapped

    def _try_newest(self) -> None:
        """Following BEST: keep the newest version loaded too (see `evaluated`)."""
        bundle = latest_bundle(self.models, "latest")
        known = [r.bundle for r in (self.current, self.newest) if r is not None]
        if bundle is None or bundle in known:
            return
        runtime = self._load(bundle)
        if runtime is not None and runtime.version > max(r.version for r in (self.current, self.newest) if r is not None):
            self.newest = runtime

    def _load(self, bundle: Path) -> Runtime | None:
        """The bundle's runtime, or None when it cannot be read or was refused as it is now (remembered)."""
        try:
            stamp = (bundle / "manifest.json").stat().st_mtime
        except OSError:  # pruned or renamed between listing and reading
            return None
        if self.refused.get(bundle, (None,))[0] == stamp:
            return None
        try:
            return Runtime.load(bundle)
        except BundleError as err:
            self.refused[bundle] = (stamp, str(err))
            log.error("refused bundle %s, still serving %s: %s", bundle.name,
                      f"version {self.current.version}" if self.current else "nothing", err)
            self.refusals += 1
            return None

    def _try(self, bundle: Path) -> bool:
        if self.current is not None and bundle == self.current.bundle:
            return False
        runtime = self._load(bundle)
        if runtime is None:
            return False
        stamp = (bundle / "manifest.json").stat().st_mtime
        if self.current is not None and runtime.version <= self.current.version:
            log.warning("ignored %s: version %d is not newer than the served %d", bundle.name, runtime.version, self.current.version)
            self.refused[bundle] = (stamp, "not newer than the served version")
            return False
        previous = self.current.version if self.current else None
        self.current, self.loaded_at = runtime, time.time()
        self.reloads += 1
        log.info("serving model version %d (was %s) from %s", runtime.version, previous, bundle)
        for callback in self.on_swap:
            callback(runtime)
        return True

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the watcher must outlive any surprise on disk
                log.exception("bundle watcher error")
            self._stop.wait(self.poll_interval)

    def start(self) -> "ModelStore":
        self.poll()
        self._thread = threading.Thread(target=self._follow, name="bundle-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
