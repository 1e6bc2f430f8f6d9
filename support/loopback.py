"""Real processes on loopback, for the tests and the benchmarks alike: free ports, waiting for a
condition, a real `redis-server`, stopping a process by signal.

Neither installed nor part of Reverie: pytest puts this folder on sys.path (pyproject's
`pythonpath`), and the benchmarks that start servers add it themselves.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open while choosing, so none is handed out twice)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(condition, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout} s")
        time.sleep(interval)


class RedisServer:
    """A real `redis-server` on a loopback port, in a temporary folder, every write synced (appendfsync
    always), the way an experience log that acknowledges writes should run it."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does)")
        (self.port,) = free_ports(1)
        self.folder = tempfile.mkdtemp(prefix="redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "RedisServer":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder, "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.process.poll() is None, "redis-server exited"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(up, 20, "redis-server")
        return self

    def stream(self, name: str) -> str:
        """The log URL of stream `name` on this server."""
        return f"{self.url}?stream={name}"

    def __exit__(self, *_) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def stop_process(process, sig: int, timeout: float) -> None:
    """Send `sig` and wait for the process to exit; kill it after `timeout` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
