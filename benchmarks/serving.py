"""Serving benchmark: what Reverie's serving path costs beyond the network stack. Prints one table.

    python benchmarks/serving.py [--models PATH] [--seconds 10] [--calls 3000]

Side by side, in one run, each server in its own process on 127.0.0.1:
- REST `POST /act` (Reverie) against a bare FastAPI endpoint that returns a constant
  (`benchmarks/bare.py`), with wrk: latency at 1 connection, throughput at 16;
- gRPC `Act` and `ActStream` (Reverie) against a bare grpcio echo of the same methods, with a
  sequential Python client sending identical bytes (responses are not decoded, so the client's
  cost is the same on both sides);
- REST `POST /imagine` at horizon 15 with 1 and 16 samples, with wrk at 1 connection;
- what experience costs: `/act` in sessions that report each step's outcome (a transition logged and
  fsynced before each answer) beside plain `/act`, and `POST /experience` of new 10-step fragments
  (the acknowledgement latency of a durable upload), with wrk at 1 and 16 connections.

Without `--models`, a CartPole agent of the default sizes (`reverie train`'s) is exported to a
temporary folder; serving cost does not depend on how well it is trained.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))
from loopback import free_ports  # noqa: E402 (support/, on sys.path above)
OBS = [0.02, -0.3, 0.05, 0.4]


def default_bundle(out: Path) -> Path:
    from reverie.trainer.agent import Agent
    from reverie.trainer.config import Config
    from reverie.trainer.envs import make_env, space_info
    from reverie.trainer.export import export_bundle

    cfg = Config()
    return export_bundle(Agent(cfg, space_info(make_env(cfg.env_id))), out, 0, "warmup", None, 1)


class Process:
    """A server process, up once `ready()` says so, stopped with SIGTERM."""

    def __init__(self, command: list[str], ready):
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command)} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def http_ready(url: str):
    import httpx

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False
    return ready


def grpc_ready(target: str):
    import grpc

    def ready() -> bool:
        try:
            grpc.channel_ready_future(grpc.insecure_channel(target)).result(timeout=1)
            return True
        except grpc.FutureTimeoutError:
            return False
    return ready


# ---------------------------------------------------------------------------- load
def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(url: str, body: dict, connections: int, seconds: int, cycle: int = 0) -> dict:
    """wrk POSTing `body` as JSON: p50, p99 (ms) and requests/s; refuses a run with any non-2xx answer.
    With `cycle`, each request's body has "__N__" replaced by a counter: modulo `cycle` when positive
    (a pool of sessions), ever new when negative (fragments never sent before)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
        if cycle:
            script.write(f'local n, template = 0, wrk.body\nrequest = function()\n  n = n + 1\n'
                         f'  local body = template:gsub("__N__", tostring({"n % " + str(cycle) if cycle > 0 else "n"}))\n'
                         '  return wrk.format(nil, nil, nil, body)\nend\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw failures against {url}:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    if set(latency) != {"50", "99"}:
        raise RuntimeError(f"wrk gave no latency distribution for {url}:\n{out}")
    return {"p50": _ms(latency["50"]), "p99": _ms(latency["99"]),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}


def grpc_calls(target: str, stream: bool, calls: int) -> dict:
    """Sequential calls with identical request bytes; responses stay bytes (not decoded)."""
    import grpc

    from reverie.wire import agent_pb2, to_tensor

    payload = agent_pb2.ActRequest(obs=to_tensor(np.asarray(OBS, np.float32)), deterministic=True).SerializeToString()
    channel = grpc.insecure_channel(target)
    times = []
    if stream:
        import queue

        requests: queue.Queue = queue.Queue()
        call = channel.stream_stream("/reverie.v1.Agent/ActStream")(iter(requests.get, None))
        for i in range(calls + 200):
            started = time.perf_counter()
            requests.put(payload)
            next(call)
            if i >= 200:  # warm-up excluded
                times.append(time.perf_counter() - started)
        requests.put(None)
    else:
        act = channel.unary_unary("/reverie.v1.Agent/Act")
        for i in range(calls + 200):
            started = time.perf_counter()
            act(payload, timeout=10)
            if i >= 200:
                times.append(time.perf_counter() - started)
    channel.close()
    times_ms = np.asarray(times) * 1e3
    return {"p50": float(np.percentile(times_ms, 50)), "p99": float(np.percentile(times_ms, 99)),
            "rps": len(times) / float(np.sum(times))}


def requests_per_call(url: str) -> float:
    """Mean /act requests answered per act-graph call so far, from the server's own metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = {name: float(value) for name, value in re.findall(r"^reverie_act_requests_per_call_(sum|count) (\S+)$", text, re.M)}
    return total["sum"] / total["count"]


def teaching(rest: str, seconds: int) -> list[tuple]:
    """What experience costs: /act in sessions that report each step's outcome (every request logs a
    transition, fsynced before the answer; 16 sessions, one per connection's share), and uploads of
    new 10-step fragments, each acknowledged once durable."""
    import httpx

    rows = []
    for connections in (1, 16):
        for k in range(16):  # each session has acted once: every later request completes a step
            httpx.post(f"{rest}/act", json={"obs": OBS, "session": f"bench-{connections}-{k}", "reset": True}).raise_for_status()
        body = {"obs": OBS, "deterministic": True, "session": f"bench-{connections}-__N__", "reward": 1.0}
        rows.append(("Reverie /act, reporting outcomes", "POST /act + reward", f"wrk c={connections}",
                     wrk(f"{rest}/act", body, connections, seconds, cycle=16)))
    step = {"obs": OBS, "action": 1, "reward": 1.0, "model_version": 1}
    for connections in (1, 16):
        upload = {"fragments": [{"episode": f"bench-{connections}-__N__", "index": 0, "steps": [step] * 10, "next_obs": OBS}]}
        rows.append(("Reverie /experience", "POST /experience, 10 steps", f"wrk c={connections}",
                     wrk(f"{rest}/experience", upload, connections, seconds, cycle=-1)))
    return rows


# ---------------------------------------------------------------------------- run
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help="a run dir, export folder or bundle (default: export a fresh one)")
    parser.add_argument("--seconds", type=int, default=10, help="per wrk run")
    parser.add_argument("--calls", type=int, default=3000, help="per gRPC measurement")
    args = parser.parse_args(argv)

    models = Path(args.models) if args.models else default_bundle(Path(tempfile.mkdtemp(prefix="reverie-bench-")))
    ports = dict(zip(("rest", "grpc", "bare_http", "bare_grpc"), free_ports(4)))
    py = sys.executable
    servers = [
        Process([py, "-m", "reverie.cli", "serve", "--models", str(models), "--port", str(ports["rest"]),
                 "--grpc-port", str(ports["grpc"]), "--experience", tempfile.mkdtemp(prefix="reverie-bench-log-")],
                http_ready(f"http://127.0.0.1:{ports['rest']}/readyz")),
        Process([py, "benchmarks/bare.py", "http", "--port", str(ports["bare_http"])],
                http_ready(f"http://127.0.0.1:{ports['bare_http']}/docs")),
        Process([py, "benchmarks/bare.py", "grpc", "--port", str(ports["bare_grpc"])],
                grpc_ready(f"127.0.0.1:{ports['bare_grpc']}")),
    ]
    rows = []
    try:
        rest, bare = f"http://127.0.0.1:{ports['rest']}", f"http://127.0.0.1:{ports['bare_http']}"
        act = {"obs": OBS, "deterministic": True}
        for name, url in (("bare FastAPI constant", bare), ("Reverie /act", rest)):
            for connections in (1, 16):
                rows.append((name, "POST /act", f"wrk c={connections}", wrk(f"{url}/act", act, connections, args.seconds)))
        per_call = requests_per_call(rest)
        rows += teaching(rest, args.seconds)
        for name, target in (("bare gRPC echo", ports["bare_grpc"]), ("Reverie gRPC", ports["grpc"])):
            for stream in (False, True):
                rows.append((name, "ActStream" if stream else "Act", "python, sequential",
                             grpc_calls(f"127.0.0.1:{target}", stream, args.calls)))
        for samples in (1, 16):
            body = {"obs": OBS, "horizon": 15, "samples": samples, "seed": 0}
            rows.append(("Reverie /imagine", f"POST /imagine H=15 S={samples}", "wrk c=1",
                         wrk(f"{rest}/imagine", body, 1, args.seconds)))
    finally:
        for server in servers:
            server.stop()

    print(f"\nmodels: {models}\n")
    print("| server | call | client | p50 ms | p99 ms | req/s |")
    print("|---|---|---|---|---|---|")
    for name, call, client, r in rows:
        print(f"| {name} | {call} | {client} | {r['p50']:.3f} | {r['p99']:.3f} | {r['rps']:,.0f} |")
    by = {(name, call, client): r for name, call, client, r in rows}
    throughput = by[("Reverie /act", "POST /act", "wrk c=16")]["rps"] / by[("bare FastAPI constant", "POST /act", "wrk c=16")]["rps"]
    act_ratio = by[("Reverie gRPC", "Act", "python, sequential")]["p50"] / by[("bare gRPC echo", "Act", "python, sequential")]["p50"]
    stream_ratio = by[("Reverie gRPC", "ActStream", "python, sequential")]["p50"] / by[("bare gRPC echo", "ActStream", "python, sequential")]["p50"]
    imagine = [r["p50"] for (name, call, _), r in by.items() if name == "Reverie /imagine"]
    reporting = by[("Reverie /act, reporting outcomes", "POST /act + reward", "wrk c=16")]["rps"] / by[("Reverie /act", "POST /act", "wrk c=16")]["rps"]
    print(f"\n/act throughput vs bare: {throughput:.0%} (goal >= 80%); /act requests per act-graph call "
          f"over both wrk runs: {per_call:.2f}")
    print(f"gRPC Act p50 vs echo: {act_ratio:.2f}x (goal <= 1.4x); ActStream p50 vs echo: {stream_ratio:.2f}x")
    print(f"/imagine H=15 p50: {imagine[0]:.2f} ms (1 sample), {imagine[1]:.2f} ms (16 samples) (goal < 5 ms)")
    print(f"/act reporting outcomes (a logged, fsynced transition each) vs plain /act throughput at c=16: "
          f"{reporting:.0%} (goal >= 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
