"""What sessions in Redis cost per `/act`: a session's step served with `--sessions redis://...` against
the same server keeping sessions in its own memory; wrk over a pool of 64 sessions, 1 and 16
connections, the two alternating for several rounds on one machine.

    python benchmarks/shared_sessions.py --seconds 6 --rounds 3

The bundle is the default agent in sequence mode (an agent with memory: each session step reads and
writes its last steps), exported untrained. Redis is a real redis-server on loopback, every write
synced (appendfsync always, as the tests run it) or, with `--appendfsync everysec`, Redis's default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import Process, http_ready, wrk  # noqa: E402  (benchmarks/serving.py)
from loopback import RedisServer, free_ports  # noqa: E402 (support/, on sys.path above)


def memory_bundle(out: Path) -> Path:
    from reverie.trainer.agent import Agent
    from reverie.trainer.config import Config
    from reverie.trainer.envs import make_env, space_info
    from reverie.trainer.export import export_bundle

    cfg = Config(sequence_mode=True)
    return export_bundle(Agent(cfg, space_info(make_env(cfg.env_id))), out, 0, "warmup", None, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec"),
                        help="Redis's persistence: every write synced, or once a second (Redis's default)")
    args = parser.parse_args()
    body = {"obs": [0.01, 0.02, 0.03, 0.04], "session": "s-__N__"}
    rows: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp, RedisServer(args.appendfsync) as redis:
        export = Path(tmp) / "export"
        memory_bundle(export)
        kinds = {"in-process": [], "redis": ["--sessions", redis.url]}
        for _ in range(args.rounds):
            for kind, flags in kinds.items():
                port, grpc_port = free_ports(2)
                url = f"http://127.0.0.1:{port}"
                server = Process([sys.executable, "-m", "reverie.cli", "serve", "--models", str(export), "--port", str(port),
                                  "--grpc-port", str(grpc_port), *flags], http_ready(url))
                try:
                    for connections in (1, 16):
                        rows.setdefault((kind, connections), []).append(
                            wrk(f"{url}/act", body, connections, args.seconds, cycle=64))
                finally:
                    server.stop()
    print("| sessions | connections | /act req/s (median of rounds) | p50 ms | p99 ms | req/s vs in-process |")
    print("|---|---|---|---|---|---|")
    for (kind, connections), runs in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0])):
        rps = statistics.median(r["rps"] for r in runs)
        base = statistics.median(r["rps"] for r in rows[("in-process", connections)])
        print(f"| {kind} | {connections} | {rps:,.0f} | {statistics.median(r['p50'] for r in runs):.2f} | "
              f"{statistics.median(r['p99'] for r in runs):.2f} | {rps / base:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
