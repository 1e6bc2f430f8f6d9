"""What an 84x84x3 frame costs to serve, in each form a game client can send it. Prints one table.

    python benchmarks/image_serving.py [--models PATH] [--calls 300]

One `reverie serve` process on 127.0.0.1; one client on one keep-alive connection sends the same real
CartPole frame (`--set pixels=true`) `--calls` times per form, bodies encoded beforehand (the
encoding's own cost is its column): REST `POST /act` with the frame as JSON numbers, as base64 raw
pixels, as a base64 PNG and as a base64 JPEG; gRPC `Act` and `ActStream` with raw uint8 bytes; and
REST with a `session`, where the server reads the 15 frames before this one (the memory's window)
each call. Without `--models`, a pixel agent of the default sizes is exported to a temporary folder.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))
from benchmarks.serving import Process, http_ready  # noqa: E402  (a server process, up once /readyz answers)
from loopback import free_ports  # noqa: E402 (support/, on sys.path above)


def default_bundle(out: Path) -> Path:
    from reverie.trainer.agent import Agent
    from reverie.trainer.config import build_config
    from reverie.trainer.envs import make_env, space_info
    from reverie.trainer.export import export_bundle

    cfg = build_config(None, ["pixels=true"])
    return export_bundle(Agent(cfg, space_info(make_env(cfg.env_spec))), out, 0, "warmup", None, 1)


def timed(call, calls: int) -> tuple[float, float]:
    """(p50, p99) milliseconds of `calls` calls, after 20 unmeasured ones."""
    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 99))


def encode_ms(encode, repeats: int = 50) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        encode()
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()

    import httpx
    import orjson
    from PIL import Image

    from reverie.clients.grpc_client import GrpcClient
    from reverie.clients.rest import png_base64
    from reverie.envs import EnvSpec

    frame = EnvSpec("CartPole-v1", pixels=True).make().reset(seed=0)[0]

    def jpeg() -> str:
        import io

        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        return base64.b64encode(buffer.getvalue()).decode()

    forms = {
        "JSON numbers": (lambda: {"obs": frame.tolist()}),
        "raw pixels, base64": (lambda: {"obs": {"data": base64.b64encode(frame.tobytes()).decode(), "shape": list(frame.shape)}}),
        "PNG, base64": (lambda: {"obs": {"image": png_base64(frame)}}),
        "JPEG (quality 90), base64": (lambda: {"obs": {"image": jpeg()}}),
    }
    with tempfile.TemporaryDirectory() as tmp:
        models = args.models or default_bundle(Path(tmp) / "export")
        port, grpc_port = free_ports(2)
        server = Process([sys.executable, "-m", "reverie.cli", "serve", "--models", str(models), "--port", str(port),
                          "--grpc-port", str(grpc_port)], http_ready(f"http://127.0.0.1:{port}/readyz"))
        rows = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
                for name, make in forms.items():
                    body = orjson.dumps(make() | {"deterministic": True})
                    headers = {"Content-Type": "application/json"}
                    p50, p99 = timed(lambda: http.post("/act", content=body, headers=headers).raise_for_status(), args.calls)
                    rows.append((f"REST /act, {name}", len(body), encode_ms(lambda: orjson.dumps(make())), p50, p99))
                http.post("/act", json={"obs": {"image": png_base64(frame)}, "session": "bench", "reset": True}).raise_for_status()
                for _ in range(15):  # a full window behind the measured calls
                    http.post("/act", json={"obs": {"image": png_base64(frame)}, "session": "bench"}).raise_for_status()
                body = orjson.dumps({"obs": {"image": png_base64(frame)}, "session": "bench", "deterministic": True})
                p50, p99 = timed(lambda: http.post("/act", content=body, headers={"Content-Type": "application/json"})
                                 .raise_for_status(), args.calls)
                rows.append(("REST /act, PNG, in a session (15 frames remembered)", len(body), None, p50, p99))
            with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
                p50, p99 = timed(lambda: client.act(frame, deterministic=True), args.calls)
                rows.append(("gRPC Act, raw uint8 bytes", frame.nbytes, None, p50, p99))
                with client.stream(deterministic=True) as stream:
                    stream.act(frame, reset=True)
                    p50, p99 = timed(lambda: stream.act(frame), args.calls)
                rows.append(("gRPC ActStream, raw uint8 bytes (its window remembered)", frame.nbytes, None, p50, p99))
        finally:
            server.stop()
    print(f"84x84x3 frame, {args.calls} calls per form, one connection")
    print("| form | request bytes | client encoding ms | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, size, encoding, p50, p99 in rows:
        print(f"| {name} | {size:,} | {'-' if encoding is None else f'{encoding:.2f}'} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
