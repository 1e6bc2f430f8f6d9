"""What the live page costs the hot path: `/act` throughput (wrk, 16 connections) with pages open,
each fetching `/live` every 2 s as the page does, against none; alternating, several rounds.

    python benchmarks/live_page.py --models runs/default --pages 1 5 --seconds 6 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import Process, http_ready, wrk  # noqa: E402  (benchmarks/serving.py)
from loopback import free_ports  # noqa: E402 (support/, on sys.path above)

OBS = [0.01, 0.02, 0.03, 0.04]


def pages_open(url: str, pages: int, stop: threading.Event) -> list[threading.Thread]:
    """`pages` pollers of /live every 2 s, staggered, as that many open pages."""
    def poll(offset: float) -> None:
        with httpx.Client(timeout=10) as client:
            stop.wait(offset)
            while not stop.is_set():
                client.get(f"{url}/live").raise_for_status()
                stop.wait(2.0)
    threads = [threading.Thread(target=poll, args=(2.0 * i / pages,), daemon=True) for i in range(pages)]
    for t in threads:
        t.start()
    return threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="a run dir (its metrics feed /live)")
    parser.add_argument("--pages", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port, grpc_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    server = Process([sys.executable, "-m", "reverie.cli", "serve", "--models", args.models, "--port", str(port),
                      "--grpc-port", str(grpc_port)], http_ready(f"{url}/readyz"))
    try:
        started = time.perf_counter()
        httpx.get(f"{url}/live").raise_for_status()
        print(f"/live answered in {1000 * (time.perf_counter() - started):.1f} ms (first call, whole run read)")
        rps: dict[int, list[float]] = {0: [], **{p: [] for p in args.pages}}
        for _ in range(args.rounds):
            for pages in rps:
                stop = threading.Event()
                threads = pages_open(url, pages, stop)
                rps[pages].append(wrk(f"{url}/act", {"obs": OBS, "deterministic": True}, 16, args.seconds)["rps"])
                stop.set()
                for t in threads:
                    t.join()
    finally:
        server.stop()
    print("\n| pages open (each polling /live every 2 s) | /act req/s, median of rounds | vs none |")
    print("|---|---|---|")
    base = statistics.median(rps[0])
    for pages, values in rps.items():
        print(f"| {pages} | {statistics.median(values):,.0f} ({', '.join(f'{v:,.0f}' for v in values)}) | "
              f"{statistics.median(values) / base:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
