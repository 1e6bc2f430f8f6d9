"""The TypeScript client (`clients/ts`) against real `reverie serve` processes on loopback, in real Node.

Its node:test files (`clients/ts/test/`) hold it to what the Python REST client is held to: CartPole behind
a read token and an experience token with an experience log (`contract.test.mjs`), Pendulum's Box actions
(`box.test.mjs`), and retries against a server that has no bundle yet and a closed port (`retry.test.mjs`).
This side starts the servers, publishes the pending server's bundle once an upload has met its 503, and
reads the experience logs back: what the client reported in a session and uploaded is there exactly,
once. The committed `schema.d.ts` must be what the API's document generates today.

Needs Node 18+ (skipped without `node`); builds the client (`npm ci`, `npm run build`) when `dist/` is
missing or older than its sources (`.ci/run` builds it first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from reverie.bundle import latest_bundle
from reverie.experience import SegmentReader, decode
from loopback import free_ports, wait_until
from serving import ProcessServer, publish_copy

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "ts"
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the TypeScript client needs Node 18+")
READER, WRITER = "ts-reader", "ts-writer"


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=CLIENT, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def built():
    """The client compiled to dist/, built here only when missing or older than its sources."""
    sources = [*CLIENT.glob("src/*.ts"), CLIENT / "package-lock.json", CLIENT / "tsconfig.json", *CLIENT.glob("test/*.mjs")]
    stamp = CLIENT / "dist" / "index.js"
    if not stamp.exists() or stamp.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        assert NPM is not None, "npm is needed to build the TypeScript client"
        if not (CLIENT / "node_modules").is_dir():
            done = run([NPM, "ci", "--no-audit", "--no-fund"], 300)
            assert done.returncode == 0, done.stdout + done.stderr
        done = run([NPM, "run", "build"], 300)
        assert done.returncode == 0, done.stdout + done.stderr
    return CLIENT


def test_the_committed_schema_is_what_the_api_document_generates(built):
    """schema.d.ts is generated (openapi-typescript) from the FastAPI app's document; a change to the API's
    bodies that was not regenerated fails here."""
    done = run([NODE, "scripts/generate.mjs", "--check"], 120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matches" in done.stdout


def logged(folder: Path) -> list:
    return [decode(payload) for _, _, payload in SegmentReader(folder).read(0).records]


def metric(url: str, endpoint: str, status: str) -> float:
    """A `reverie_requests_total` counter of the server's /metrics (0 before any such request)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    pattern = rf'^reverie_requests_total\{{(?=[^}}]*endpoint="{re.escape(endpoint)}")(?=[^}}]*status="{status}")(?=[^}}]*transport="http")[^}}]*\}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


@pytest.mark.slow  # trains, or runs real processes for tens of seconds
@pytest.mark.timeout(300)
def test_the_typescript_client_holds_the_rest_contract_against_real_servers(built, exported_agents, tmp_path):
    cartpole = exported_agents["CartPole-v1"][1]
    pending_models = tmp_path / "pending" / "export"
    pending_models.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (closed_port,) = free_ports(1)
    tokens = {"REVERIE_API_TOKEN": READER, "REVERIE_EXPERIENCE_TOKEN": WRITER}
    with ProcessServer(cartpole, env=tokens, args=("--experience", str(tmp_path / "log"))) as main, \
            ProcessServer(exported_agents["Pendulum-v1"][1]) as box, \
            ProcessServer(pending_models, poll_interval=0.2, args=("--experience", str(tmp_path / "pending-log"))) as pending:
        env = {**os.environ, "REVERIE_URL": main.url, "REVERIE_TOKEN": READER, "REVERIE_EXPERIENCE_TOKEN": WRITER,
               "REVERIE_BOX_URL": box.url, "REVERIE_PENDING_URL": pending.url,
               "REVERIE_CLOSED_URL": f"http://127.0.0.1:{closed_port}", "REVERIE_TS_OUT": str(out)}
        files = [f"test/{name}.test.mjs" for name in ("contract", "box", "retry")]
        node = subprocess.Popen([NODE, "--test", "--test-reporter=spec", *files], cwd=CLIENT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # The retry test's upload meets 503s (no bundle yet); then a bundle appears, as a trainer's would.
            wait_until(lambda: node.poll() is not None or metric(pending.url, "/experience", "503") >= 1, 180,
                       "the pending server's first 503 on /experience", interval=0.1)
            if node.poll() is None:
                publish_copy(latest_bundle(cartpole), pending_models)
            output, _ = node.communicate(timeout=180)
        finally:
            if node.poll() is None:
                node.kill()
                node.communicate()
        refusals_503 = metric(pending.url, "/act", "503")
    print(output)
    assert node.returncode == 0, output[-8000:]
    counts = {key: int(n) for key, n in re.findall(r"^\S* ?(tests|pass|fail|skipped|todo|cancelled) (\d+)$", output, re.MULTILINE)}
    assert counts.get("fail") == 0 and counts.get("cancelled") == 0 and counts.get("skipped") == 0, output[-3000:]
    assert counts.get("pass", 0) >= 20, output[-3000:]
    assert refusals_503 == 1  # the act, not retried

    main_log = logged(tmp_path / "log")
    # Teaching: each outcome the client reported in its session is a logged transition, exactly as sent.
    taught = json.loads((out / "teach.json").read_text())
    records = [r for r in main_log if r.source == taught["source"]]
    assert len(records) == sum(map(len, taught["episodes"])) == 8
    episode_ids = []
    for played in taught["episodes"]:
        mine, records = records[:len(played)], records[len(played):]
        assert len({r.episode for r in mine}) == 1 and [r.index for r in mine] == list(range(len(played)))
        episode_ids.append(mine[0].episode)
        for record, step in zip(mine, played):
            np.testing.assert_array_equal(record.observations, np.asarray([step["obs"], step["next_obs"]], np.float32))
            assert (record.actions.tolist(), record.rewards.tolist(), record.model_versions.tolist()) == \
                ([step["action"]], [np.float32(step["reward"])], [1])
            assert (record.terminated, record.truncated) == (step["terminated"], step["truncated"])
    assert len(set(episode_ids)) == 2  # a new episode after the end

    # Uploads: each fragment once (the repeated upload stored nothing), at the seq its answer gave.
    uploaded = json.loads((out / "uploads.json").read_text())
    by_key = {(r.episode, r.index): r for r in main_log}
    episode = uploaded["fragments"][0]["episode"]
    assert sum(r.episode == episode for r in main_log) == 2
    for fragment in uploaded["fragments"]:
        record = by_key[(fragment["episode"], fragment["index"])]
        assert record.source == "upload"
        np.testing.assert_array_equal(record.observations, np.asarray(fragment["observations"], np.float32))
        assert record.actions.tolist() == fragment["actions"] and record.rewards.tolist() == fragment["rewards"]
        assert record.model_versions.tolist() == fragment.get("modelVersions", [-1] * len(fragment["rewards"]))
        assert record.terminated == fragment.get("terminated", False)
    assert not any(r.episode.endswith("-bad") or r.episode.endswith("-denied") for r in main_log)  # refused uploads stored nothing

    # The retried upload: stored once, on the server that had no bundle when it began.
    retried = json.loads((out / "retry.json").read_text())
    (record,) = logged(tmp_path / "pending-log")
    assert (record.episode, record.index) == (retried["fragment"]["episode"], 0) and retried["retries"] >= 1
    np.testing.assert_array_equal(record.observations, np.asarray(retried["fragment"]["observations"], np.float32))
