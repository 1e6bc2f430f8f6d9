"""What teaching costs per request: plain `/act` and `/act` reporting outcomes, alternating on one server.

    python benchmarks/teaching.py [--rounds 3] [--seconds 5] [--connections 16]

One `reverie serve --experience DIR` (a CartPole agent of the default sizes, exported to a temporary
folder) answers wrk's POSTs of both kinds in turn, so the two are compared on one process and one
machine state. Each round prints requests/s of both, their ratio (the issue's goal: >= 80% at 16
connections), and the CPU each costs per request, read from /proc for the event loop's thread (the
process's main thread, where every REST request runs) and for the other threads together (the
experience log's writer): throughput at 16 connections is bound by the event loop's thread, so its
microseconds per request say where a change helps when requests/s are too noisy to.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "support"))
from loopback import free_ports  # noqa: E402
from serving import OBS, Process, default_bundle, http_ready, wrk  # noqa: E402


def thread_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each of the process's threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def measure(url: str, pid: int, body: dict, connections: int, seconds: int, cycle: int) -> dict:
    before = thread_seconds(pid)
    result = wrk(f"{url}/act", body, connections, seconds, cycle=cycle)
    after = thread_seconds(pid)
    requests = result["rps"] * seconds
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    result["loop_us"] = spent.get(pid, 0.0) / requests * 1e6
    result["other_us"] = sum(s for tid, s in spent.items() if tid != pid) / requests * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args(argv)

    import httpx

    models = default_bundle(Path(tempfile.mkdtemp(prefix="reverie-bench-")))
    port, grpc_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    server = Process([sys.executable, "-m", "reverie.cli", "serve", "--models", str(models), "--port", str(port),
                      "--grpc-port", str(grpc_port), "--experience", tempfile.mkdtemp(prefix="reverie-bench-log-")],
                     http_ready(f"{url}/readyz"))
    sessions = args.connections
    for k in range(sessions):  # each session has acted once: every later request completes a step
        httpx.post(f"{url}/act", json={"obs": OBS, "session": f"teach-{k}", "reset": True}).raise_for_status()
    kinds = {"plain": ({"obs": OBS, "deterministic": True}, 0),
             "reporting": ({"obs": OBS, "deterministic": True, "session": "teach-__N__", "reward": 1.0}, sessions)}
    rows = []
    try:
        for _ in range(args.rounds):
            rows.append({kind: measure(url, server.process.pid, body, args.connections, args.seconds, cycle)
                         for kind, (body, cycle) in kinds.items()})
    finally:
        server.stop()

    print(f"\n/act at {args.connections} connections, {args.seconds} s per run, one server, the kinds alternating\n")
    print("| round | plain req/s | reporting req/s | ratio | plain: event loop us/req | reporting: event loop us/req "
          "| reporting: other threads us/req |")
    print("|---|---|---|---|---|---|---|")
    for i, row in enumerate(rows, 1):
        plain, reporting = row["plain"], row["reporting"]
        print(f"| {i} | {plain['rps']:,.0f} | {reporting['rps']:,.0f} | {reporting['rps'] / plain['rps']:.0%} "
              f"| {plain['loop_us']:.0f} | {reporting['loop_us']:.0f} | {reporting['other_us']:.0f} |")
    ratio = statistics.median(row["reporting"]["rps"] / row["plain"]["rps"] for row in rows)
    print(f"\nmedian ratio, reporting vs plain /act: {ratio:.0%} (goal >= 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
