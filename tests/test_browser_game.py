"""A game of the client's own in a browser (`clients/examples/catch/`): canvas, no framework, the TypeScript
client, against `reverie up --spaces clients/examples/catch/spaces.json` with no env in the trainer.

The game's rules run under Node (`node --test`, its own file). Then one `reverie up` (smoke preset, the
page's origin allowed by `--cors-origin`) and the page served from another loopback port, in headless
Chromium (Debian's `chromium` and `chromium-driver`): the page connects and shows the version `/model`
serves, plays and teaches episodes in its session, and evaluates in an evaluation session every few
episodes. What it played is in the experience log exactly: each taught episode's rewards sum to the
return the page shows, over as many steps, and the game replayed under Node from the page's seed with
the logged actions plays the logged observations, rewards and ends; the evaluation episodes are
marked so, each played by one version. The trainer's evaluation of a version is the mean of the page's
evaluation episodes of it; the version serving the page goes up, trained on its steps (the only
experience there is); and the page and the browser's console hold no error.

Needs Node 18+ and the built client (`npm ci && npm run build` in clients/ts, done here when `dist/` is
missing or older than its sources); skipped without `node`.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from loopback import free_ports, wait_until

from serving import chrome, logged_fragments
from reverie.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "clients"
GAME = CLIENTS / "examples" / "catch"
CLIENT = CLIENTS / "ts"
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the game and its client need Node 18+")
EPISODES = 8  # taught episodes the page must finish
RATE = 15  # the page's steps per second: a game's tick rate that the smoke trainer keeps up with on 2 busy cores
SEED = 7  # the page's game: the same balls every run, so that the log can be replayed
EVAL_EVERY = 3  # the page's evaluation round after every 3 taught episodes (3 episodes each: client_eval_episodes)


@pytest.fixture(scope="module")
def built() -> Path:
    """The TypeScript client compiled to clients/ts/dist/, built here only when missing or older than its sources."""
    sources = [*CLIENT.glob("src/*.ts"), CLIENT / "package-lock.json", CLIENT / "tsconfig.json"]
    stamp = CLIENT / "dist" / "index.js"
    if not stamp.exists() or stamp.stat().st_mtime < max(p.stat().st_mtime for p in sources):
        assert NPM is not None, "npm is needed to build the TypeScript client"
        for step in ([NPM, "ci", "--no-audit", "--no-fund"] if not (CLIENT / "node_modules").is_dir() else None,
                     [NPM, "run", "build"]):
            if step is not None:
                done = subprocess.run(step, cwd=CLIENT, capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, done.stdout + done.stderr
    return CLIENT


def test_the_games_rules_hold_under_node():
    done = subprocess.run([NODE, "--test", str(GAME / "game.test.mjs")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# pass 7" in done.stdout and "# fail 0" in done.stdout


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_):
        pass


def episodes(fragments: list, source: str) -> list[dict]:
    """One session's finished episodes in the order they started: return, steps, versions, evaluation flags."""
    by_episode: dict[str, list] = defaultdict(list)
    for fragment in fragments:
        if fragment.source == source:
            by_episode[fragment.episode].append(fragment)
    finished = []
    for parts in by_episode.values():
        if not (parts[-1].terminated or parts[-1].truncated):
            continue  # still being played when the log was read
        assert [p.index for p in parts] == list(range(len(parts)))  # one record a step, in order, none missing
        assert not any(p.terminated or p.truncated for p in parts[:-1])
        for before, after in zip(parts, parts[1:]):  # each step follows from the one before
            assert np.array_equal(before.observations[1], after.observations[0])
        finished.append({"return": float(sum(p.rewards.sum() for p in parts)), "steps": len(parts),
                         "versions": {int(v) for p in parts for v in p.model_versions},
                         "evaluation": {p.evaluation for p in parts},
                         "observations": np.stack([p.observations[0] for p in parts] + [parts[-1].observations[1]]),
                         "actions": np.concatenate([p.actions for p in parts]),
                         "rewards": np.concatenate([p.rewards for p in parts]),
                         "ended": (parts[-1].terminated, parts[-1].truncated)})
    return finished


REPLAY = """
import { readFileSync } from "node:fs";
import { Catch } from "%s";
const { seed, episodes } = JSON.parse(readFileSync(0, "utf8"));
const game = new Catch(seed);
const played = episodes.map((actions) => {
  const observations = [Array.from(game.reset())], rewards = [];
  let step;
  for (const action of actions) {
    if (game.over) break; // the logged episode goes on where the game ended: a mismatch, for the test to see
    step = game.step(action);
    observations.push(Array.from(step.obs));
    rewards.push(step.reward);
  }
  return { observations, rewards, ended: [step.terminated, step.truncated] };
});
process.stdout.write(JSON.stringify(played));
"""


def replayed(seed: int, actions: list[list[int]]) -> list[dict]:
    """The game (game.mjs, under Node) played again from `seed` with these actions, episode after episode."""
    script = REPLAY % (GAME / "game.mjs").as_uri()
    done = subprocess.run([NODE, "--input-type=module", "-e", script], input=json.dumps({"seed": seed, "episodes": actions}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_browser_game_connects_plays_teaches_and_is_served_newer_versions(built, tmp_path):
    from selenium.webdriver.common.by import By

    pages = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(CLIENTS)))
    threading.Thread(target=pages.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{pages.server_address[1]}"
    port, grpc_port = free_ports(2)
    url, run_dir = f"http://127.0.0.1:{port}", tmp_path / "run"
    # --follow latest: the page is served each new export (the default, best, waits for evaluations to promote one).
    # No checkpoints: at the smoke preset's every 100 steps they would take most of the trainer's time here.
    command = [sys.executable, "-m", "reverie.cli", "up", "--spaces", str(GAME / "spaces.json"), "--run-dir", str(run_dir),
               "--preset", "smoke", "--set", "threads=1", "--set", "checkpoint_every=100000", "--follow", "latest",
               "--cors-origin", origin, "--port", str(port), "--grpc-port", str(grpc_port)]
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    driver = None
    try:
        def ready() -> bool:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "reverie up ready", interval=0.25)
        first = httpx.get(f"{url}/model").json()
        assert first["manifest"]["world"] == "client" and first["manifest"]["env_id"] == "catch"
        driver = chrome("1200,1000")
        started = time.monotonic()
        driver.get(f"{origin}/examples/catch/index.html?server={url}&rate={RATE}&eval_every={EVAL_EVERY}&seed={SEED}")
        served = lambda: driver.find_element(By.ID, "served").get_attribute("data-version")  # noqa: E731
        count = lambda element: int(driver.find_element(By.ID, element).get_attribute("data-count"))  # noqa: E731
        # The page's state and what it shows, read at one moment (the page plays on meanwhile).
        state = lambda: driver.execute_script(  # noqa: E731
            "const shown = (id, key) => document.getElementById(id).dataset[key];"
            "return {...window.catchPage, episodes: shown('episodes', 'count'), points: shown('chart', 'points'),"
            " error: document.getElementById('error').textContent};")

        # It connects: the version it shows is the one /model serves.
        wait_until(lambda: served() != "", 30, "the page's served version", interval=0.2)
        shown = int(served())
        assert shown == first["model_version"]
        # It plays and teaches episodes, and a newer version trained on them comes to serve it.
        wait_until(lambda: count("episodes") >= EPISODES and int(served()) > shown, 150,
                   f"{EPISODES} episodes and a version newer than v{shown} on the page", interval=0.5)

        # Evaluations: once a version has played 3 evaluation episodes on the page, the trainer's evaluation
        # of that version is their mean.
        def evaluated() -> dict[int, list[float]]:
            returns: dict[int, list[float]] = defaultdict(list)
            for e in state()["evaluations"]:
                returns[e["version"]].append(e["return"])
            return {v: r[:3] for v, r in returns.items() if len(r) >= 3}

        wait_until(lambda: evaluated(), max(10.0, 200 - (time.monotonic() - started)), "three evaluation episodes of one version",
                   interval=0.5)
        wanted = evaluated()
        rows = lambda: {r["eval_version"]: r["eval_return"] for r in RunDir(run_dir).metrics() if "eval_return" in r}  # noqa: E731
        wait_until(lambda: set(wanted) <= set(rows()), 60, f"the trainer's evaluations of v{sorted(wanted)}", interval=0.5)
        for version, returns in wanted.items():
            assert rows()[version] == pytest.approx(np.mean(returns), rel=1e-6)

        page = state()
        assert page["errors"] == [] and page["error"] == ""
        assert int(page["episodes"]) == len(page["returns"]) >= EPISODES
        assert int(page["points"]) == len(page["returns"]) + len(page["evaluations"])  # the chart drew them all
        assert page["served"] > shown
        # What it played reached the experience log, in its session, exactly.
        fragments = logged_fragments(run_dir / "experience")
        taught = episodes(fragments, f"session:{page['session']}")
        assert [e["return"] for e in taught[:len(page["returns"])]] == page["returns"]
        assert [e["steps"] for e in taught[:len(page["lengths"])]] == page["lengths"]
        assert all(e["evaluation"] == {False} for e in taught)
        # The page played the served actions in its game and reported exactly what followed: the game, seeded
        # as the page seeded it and given the logged actions, plays the logged observations, rewards and ends.
        again = replayed(SEED, [e["actions"].tolist() for e in taught])
        for logged_episode, replay in zip(taught, again, strict=True):
            assert logged_episode["observations"].dtype == np.float32 and logged_episode["observations"].shape[1:] == (5,)
            assert np.array_equal(logged_episode["observations"], np.asarray(replay["observations"], np.float32))
            assert logged_episode["rewards"].tolist() == replay["rewards"]
            assert logged_episode["ended"] == tuple(replay["ended"])
        assert np.abs(np.concatenate([e["observations"] for e in taught])).max() <= 1
        played_by = {int(v) for f in fragments if f.source == f"session:{page['session']}" for v in f.model_versions}
        assert max(played_by) > shown  # a newer version played the page's game
        evaluations = episodes(fragments, f"session:{page['evalSession']}")
        assert [(e["return"], e["versions"]) for e in evaluations[:len(page["evaluations"])]] == \
            [(e["return"], {e["version"]}) for e in page["evaluations"]]  # one version a whole evaluation episode
        assert all(e["evaluation"] == {True} for e in evaluations)
        assert {f.source for f in fragments} == {f"session:{page['session']}", f"session:{page['evalSession']}"}
        # The newer version served was trained on the page's steps: they are the only experience there is.
        newer = httpx.get(f"{url}/model").json()
        assert newer["model_version"] > shown and newer["manifest"]["training_step"] >= 100
        assert max(r.get("client_steps", 0) for r in RunDir(run_dir).metrics()) >= 100
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        artifacts = Path(os.environ.get("REVERIE_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "browser_game.png"))
    finally:
        if driver is not None:
            driver.quit()
        pages.shutdown()
        pages.server_close()
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0, (tmp_path / "up.log").read_text()
