"""A run's served versions: ONNX bundles written to the run's export folder, mirrored to object
storage (`publish`), and the version a client step's staleness counts from."""

from __future__ import annotations

import logging
from pathlib import Path

from reverie.bundle import latest_bundle
from reverie.objectstore import Publisher, StoreError

log = logging.getLogger("reverie.trainer")


class Releases:
    def __init__(self, export_dir: Path, keep: int, publish: str | None = None):
        """`publish`: s3://BUCKET/PREFIX that every version is also uploaded to (checked now; a failed
        upload later is logged and finished by the next)."""
        self.export_dir, self.keep = export_dir, keep
        self.publisher = Publisher(publish) if publish else None
        if self.publisher is not None:
            self.publisher.check()
        self.model_version = self._lag_reference()

    def export(self, agent, env_step: int, phase: str, eval_return: float | None) -> Path:
        """A new version of `agent`, scored by `eval_return` (None: its clients evaluate it later)."""
        from .export import export_bundle  # the ONNX exporter loads only when a run exports

        path = export_bundle(agent, self.export_dir, env_step, phase, eval_return, self.keep)
        self.changed()
        return path

    def changed(self) -> None:
        """The export folder changed (a version, or a version's evaluation): mirror it and follow BEST."""
        self.model_version = self._lag_reference()
        if self.publisher is None:
            return
        try:
            self.publisher.push(self.export_dir)
        except StoreError as err:  # a store that is away gets it next time
            log.error("publishing to the object store failed, training goes on (the next export retries): %s", err)

    def _lag_reference(self) -> int:
        """BEST when there is one (what a server following BEST acts with: its steps are never stale,
        even while newer exports wait to be promoted), else 0."""
        best = latest_bundle(self.export_dir, "best")
        return int(best.name[1:]) if best is not None and best.name.startswith("v") else 0
