"""Helpers for the serving tests: real servers on loopback ports, and bundle publishing.

`ThreadServer` runs the real uvicorn server in a thread of the test process (its store is at
hand); `ProcessServer` runs `reverie serve` as a separate process, as a deployment does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import numpy as np

from loopback import free_ports, wait_until
from reverie.bundle import Manifest, publish
from reverie.experience import Fragment, SegmentLog, encode
from reverie.service.server import Service
from reverie.service.settings import ServiceSettings


class ThreadServer:
    def __init__(self, models: Path, **settings):
        port, grpc_port = free_ports(2)
        self.settings = ServiceSettings(models=models, port=port, grpc_port=grpc_port, **settings)
        self.service = Service(self.settings)
        self.store = self.service.store
        self.url = f"http://127.0.0.1:{self.settings.port}"
        self.grpc_target = f"127.0.0.1:{self.settings.grpc_port}"

    def __enter__(self) -> "ThreadServer":
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.service.http.started, 10, "server start")
        return self

    def __exit__(self, *_) -> None:
        self.service.stop()
        self.thread.join(timeout=15)


class ProcessServer:
    """`reverie serve` in its own process; its log is kept for the assertions."""

    def __init__(self, models: Path, env: dict | None = None, poll_interval: float | None = None, args: tuple = ()):
        self.port, self.grpc_port = free_ports(2)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        command = [sys.executable, "-m", "reverie.cli", "serve", "--models", str(models), "--port", str(self.port),
                   "--grpc-port", str(self.grpc_port)]
        if poll_interval is not None:
            command += ["--poll-interval", str(poll_interval)]
        command += list(args)
        self.env = {**os.environ, **(env or {})}
        self.command = command

    def __enter__(self) -> "ProcessServer":
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)

        def healthy() -> bool:
            assert self.process.poll() is None, f"reverie serve exited: {self.output()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, 30, "reverie serve /healthz")
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def __exit__(self, *_) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def publish_copy(source: Path, export_dir: Path, keep: int = 100, **changes) -> Path:
    """Publish `source`'s graphs as the next version under `export_dir`, through the real publish()."""
    manifest = Manifest.model_validate_json((source / "manifest.json").read_text())
    export_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=export_dir))
    for spec in manifest.graphs.values():
        shutil.copy(source / spec.file, staging / spec.file)
    return publish(export_dir, staging, manifest.model_copy(update=changes), keep)


def publish_broken(source: Path, export_dir: Path, damage: str) -> Path:
    """Publish the next version with one graph damaged after its checksum was taken.

    damage="checksum": bytes flipped, manifest unchanged (the checksum no longer matches);
    damage="truncated": the graph cut in half and its checksum updated, so only onnxruntime can tell.
    """
    from reverie.bundle import POINTER, sha256_of, version_dir, versions

    scratch = Path(tempfile.mkdtemp(prefix="scratch-"))
    built = publish_copy(source, scratch)
    manifest = Manifest.model_validate_json((built / "manifest.json").read_text())
    graph = built / manifest.graphs["policy"].file
    data = graph.read_bytes()
    if damage == "checksum":
        graph.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:110]) + data[110:])
    else:
        graph.write_bytes(data[: len(data) // 2])
        manifest.sha256[graph.name] = sha256_of(graph)
    manifest.model_version = (versions(export_dir) or [0])[-1] + 1
    (built / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    final = version_dir(export_dir, manifest.model_version)
    os.replace(built, final)
    (export_dir / f".{POINTER}.tmp").write_text(final.name)
    os.replace(export_dir / f".{POINTER}.tmp", export_dir / POINTER)
    shutil.rmtree(scratch)
    return final


def logged_fragments(folder: Path) -> list:
    """Every fragment in an experience log (segment files or redis://), in order."""
    from reverie.experience import decode, open_reader

    reader, fragments, seq = open_reader(str(folder)), [], 0
    while True:
        result = reader.read(seq)
        if not result.records:
            return fragments
        fragments += [decode(payload) for _, _, payload in result.records]
        seq = result.next_seq


def fragment(episode: int, index: int, steps: int, first_step: int, end: str = "", version: int = 1,
             source: str = "client") -> Fragment:
    """Steps `first_step`.. of episode `episode`: each observation is [1000 + episode, step, 0, 0], so
    every transition can be told apart and its successor checked."""
    obs = np.zeros((steps + 1, 4), np.float32)
    obs[:, 0], obs[:, 1] = 1000 + episode, np.arange(first_step, first_step + steps + 1)
    return Fragment(f"ep-{episode}", index, obs, np.arange(steps, dtype=np.int64) % 2, np.ones(steps, np.float32),
                    np.full(steps, version, np.int64), end == "terminated", end == "truncated", source)


def write(folder: Path, fragments: list[Fragment]) -> None:
    with SegmentLog(folder) as log:
        log.append([(f.key, encode(f)) for f in fragments])


def chrome(window: str = "1400,1800"):
    """Headless Chromium under selenium (Debian's chromium and chromium-driver), keeping the console's log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    for needed in ("chromium", "chromedriver"):
        if shutil.which(needed) is None:
            raise RuntimeError(f"{needed} is not installed: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={window}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=DriverService(shutil.which("chromedriver")), options=options)
