"""Does the served agent play as the trainer evaluated it? One bundle, every way a client can reach it.

    python benchmarks/served_agent.py --models runs/px-cartpole/export            # the newest bundle
    python benchmarks/served_agent.py --models runs/pong/export --episodes 3

Prints the trainer's own evaluation of the bundle (its manifest's `last_eval_return`), then the same
episodes (the run's evaluation seeds) played by `reverie eval` (onnxruntime in this process), and by
the game loop against `reverie serve` on 127.0.0.1: REST with each frame as a PNG file, REST with
JSON numbers (vector models), gRPC Act and a gRPC ActStream with raw bytes; mean return, the ratio
to the trainer's, and the game loop's p50 latency per action.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))
from benchmarks.serving import Process, http_ready  # noqa: E402
from loopback import free_ports  # noqa: E402 (support/, on sys.path above)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, required=True, help="an export folder or one bundle")
    parser.add_argument("--episodes", type=int, default=None, help="default: the trainer's eval_episodes")
    args = parser.parse_args()

    from reverie.clients import game_loop
    from reverie.bundle import latest_bundle, load_manifest
    from reverie.cli import main as reverie

    logging.getLogger("httpx").setLevel(logging.WARNING)  # `reverie eval` turns on INFO logs: a line per request
    bundle = latest_bundle(args.models)
    manifest = load_manifest(bundle)
    episodes = str(args.episodes or manifest.eval_episodes)
    seed = str(manifest.seed)  # the trainer's evaluation episodes
    rows = [("trainer's evaluation (manifest)", manifest.last_eval_return, None)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        reverie(["eval", "--bundle", str(bundle), "--episodes", episodes, "--seed", seed])
    rows.append(("reverie eval (onnxruntime, no network)", float(out.getvalue().split("mean return ")[1].split()[0]), None))

    port, grpc_port = free_ports(2)
    server = Process([sys.executable, "-m", "reverie.cli", "serve", "--models", str(bundle), "--port", str(port),
                      "--grpc-port", str(grpc_port)], http_ready(f"http://127.0.0.1:{port}/readyz"))
    frames = manifest.observation_space.dtype == "uint8"
    ways = {"REST, PNG frames" if frames else "REST, JSON numbers": ["--url", f"http://127.0.0.1:{port}"],
            "gRPC Act, raw bytes": ["--transport", "grpc", "--target", f"127.0.0.1:{grpc_port}"],
            "gRPC ActStream, raw bytes": ["--transport", "grpc", "--target", f"127.0.0.1:{grpc_port}", "--stream"]}
    try:
        for name, way in ways.items():
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                game_loop.main(way + ["--episodes", episodes, "--seed", seed, "--json"])
            summary = json.loads(out.getvalue())
            rows.append((f"game loop, {name}", summary["mean_return"], summary["latency_ms_p50"]))
    finally:
        server.stop()
    trainer = manifest.last_eval_return
    print(f"{manifest.env_id} bundle v{manifest.model_version} (env step {manifest.training_step}), "
          f"{episodes} episodes of the run's evaluation seeds")
    print("| played by | mean return | / trainer's | p50 ms per action |")
    print("|---|---|---|---|")
    for name, value, latency in rows:
        ratio = "–" if value is None or not trainer else f"{value / trainer:.3f}"
        print(f"| {name} | {'–' if value is None else f'{value:.1f}'} | {ratio} | {'–' if latency is None else f'{latency:.2f}'} |")


if __name__ == "__main__":
    main()
