"""CORS: `reverie serve|up --cors-origin ORIGIN` (repeatable) lets pages from those origins call the REST API.

A real `reverie serve` (a token set, an experience log) allows two origins: preflights and requests from
them get `access-control-allow-origin` on every route, the hot paths and sessions included, and so do
the answers a browser must be able to read to tell what went wrong (401, 413 from the body guard, 422);
an unlisted origin gets none, and a server started without the flag sends no CORS header at all. Then
headless Chromium (Debian's `chromium` and `chromium-driver`): a page from the allowed loopback origin
POSTs /act with a bearer token and reads the answer and a 422, and the same fetch from a page of an
unlisted origin fails in the browser.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from loopback import free_ports, stop_process, wait_until

from serving import ProcessServer, chrome

TOKEN = "cors-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OBS = [0.01, 0.02, 0.03, 0.04]
GAME = "https://game.example"  # allowed beside the page's origin: the flag repeats
UNLISTED = "https://evil.example"


class Page(BaseHTTPRequestHandler):
    """An empty page: the origin a browser's fetch comes from."""

    def do_GET(self):
        body = b"<!doctype html><title>a game</title><p>a game"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


@pytest.fixture(scope="module")
def pages():
    """(allowed, unlisted): two origins, each a page server on a loopback port of its own (another port is
    another origin), already listening, so that the server's flags can name them."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Page) for _ in range(2)]
    for page in servers:
        threading.Thread(target=page.serve_forever, daemon=True).start()
    yield tuple(f"http://127.0.0.1:{page.server_address[1]}" for page in servers)
    for page in servers:
        page.shutdown()
        page.server_close()


@pytest.fixture(scope="module")
def server(exported_agents, pages, tmp_path_factory):
    log = tmp_path_factory.mktemp("cors") / "experience"
    args = ("--experience", str(log), "--cors-origin", pages[0], "--cors-origin", GAME + "/")  # a trailing slash is forgiven
    with ProcessServer(exported_agents["CartPole-v1"][1], env={"REVERIE_API_TOKEN": TOKEN}, args=args) as server:
        yield server


def preflight(url: str, path: str, origin: str, method: str = "POST") -> httpx.Response:
    return httpx.options(f"{url}{path}", headers={"Origin": origin, "Access-Control-Request-Method": method,
                                                  "Access-Control-Request-Headers": "authorization,content-type"})


def cors_headers(response: httpx.Response) -> dict:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


ROUTES = [("POST", "/act"), ("POST", "/value"), ("GET", "/imagine"), ("POST", "/imagine"), ("POST", "/experience"),
          ("GET", "/model"), ("GET", "/readyz"), ("GET", "/healthz"), ("GET", "/live"), ("GET", "/metrics")]


@pytest.mark.parametrize("allowed", [0, 1], ids=["page", "game"])
def test_preflights_from_an_allowed_origin_are_answered_on_every_route(server, pages, allowed):
    origin = (pages[0], GAME)[allowed]
    for method, path in ROUTES:
        answer = preflight(server.url, path, origin, method)
        assert answer.status_code == 200, (path, answer.text)
        assert answer.headers["access-control-allow-origin"] == origin
        assert {"GET", "POST"} <= set(answer.headers["access-control-allow-methods"].replace(" ", "").split(","))
        assert {"authorization", "content-type"} <= set(answer.headers["access-control-allow-headers"].lower()
                                                        .replace(" ", "").split(","))
    assert preflight(server.url, "/act", origin, "DELETE").status_code == 400  # only GET and POST


def fragment(episode: str) -> dict:
    step = {"obs": OBS, "action": 0, "reward": 1.0, "model_version": 1}
    return {"episode": episode, "index": 0, "steps": [step, step], "next_obs": OBS}


@pytest.mark.parametrize("allowed", [0, 1], ids=["page", "game"])
def test_answers_to_an_allowed_origin_carry_the_header_errors_included(server, pages, allowed):
    origin = (pages[0], GAME)[allowed]
    with httpx.Client(base_url=server.url, headers={"Origin": origin}) as client:
        answers = {
            "act": client.post("/act", json={"obs": OBS, "seed": 1}, headers=AUTH),
            "act batch": client.post("/act", json={"observations": [OBS, OBS]}, headers=AUTH),
            "session": client.post("/act", json={"obs": OBS, "session": f"s{allowed}", "reset": True}, headers=AUTH),
            "value": client.post("/value", json={"obs": OBS}, headers=AUTH),
            "imagine get": client.get("/imagine", params={"obs": "0,0,0,0", "horizon": 3}, headers=AUTH),
            "imagine post": client.post("/imagine", json={"obs": OBS, "actions": [0, 1]}, headers=AUTH),
            "experience": client.post("/experience", json={"fragments": [fragment(f"cors-{len(origin)}")]}, headers=AUTH),
            "model": client.get("/model", headers=AUTH),
            "healthz": client.get("/healthz"),
            "readyz": client.get("/readyz"),
        }
        errors = {
            "no token": (client.post("/act", json={"obs": OBS}), 401),
            "no token, cold route": (client.get("/model"), 401),
            "wrong shape": (client.post("/act", json={"obs": OBS[:3]}, headers=AUTH), 422),
            "bad plan": (client.post("/imagine", json={"obs": OBS, "actions": [0, 7]}, headers=AUTH), 422),
            "too large": (client.post("/act", content=b"x" * (4 << 20 | 1), headers={**AUTH, "Content-Type": "application/json"}), 413),
        }
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
        assert answer.headers.get("access-control-allow-origin") == origin, name
        assert "origin" in answer.headers.get("vary", "").lower(), name  # caches keep one answer per origin
    for name, (answer, status) in errors.items():
        assert answer.status_code == status, (name, answer.text)
        assert answer.headers.get("access-control-allow-origin") == origin, name
        assert answer.json()["field"], name  # a page can read which field was wrong
    assert "retry-after" in answers["act"].headers["access-control-expose-headers"].lower()


def test_an_unlisted_origin_gets_no_cors_headers(server, pages):
    for origin in (UNLISTED, pages[1], pages[0] + "0", pages[0].replace("127.0.0.1", "localhost"), "null"):
        refused = preflight(server.url, "/act", origin)
        assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
        answer = httpx.post(f"{server.url}/act", json={"obs": OBS}, headers={**AUTH, "Origin": origin})
        assert answer.status_code == 200  # the server answers; the browser keeps the answer from the page
        assert "access-control-allow-origin" not in answer.headers


def test_without_the_flag_there_are_no_cors_headers_at_all(exported_agents, pages):
    with ProcessServer(exported_agents["CartPole-v1"][1]) as server:
        answer = preflight(server.url, "/act", pages[0])
        assert answer.status_code == 405 and cors_headers(answer) == {}  # no preflight handling: POST is all /act takes
        for response in (httpx.post(f"{server.url}/act", json={"obs": OBS}, headers={"Origin": pages[0]}),
                         httpx.post(f"{server.url}/act", json={"obs": OBS[:3]}, headers={"Origin": pages[0]}),
                         httpx.get(f"{server.url}/model", headers={"Origin": pages[0]})):
            assert response.status_code in (200, 422) and cors_headers(response) == {}


def test_an_origin_a_browser_could_never_send_is_refused_at_start(exported_agents):
    done = subprocess.run([sys.executable, "-m", "reverie.cli", "serve", "--models", str(exported_agents["CartPole-v1"][1]),
                           "--port", "0", "--cors-origin", "localhost:3000"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "localhost:3000" in done.stderr and "scheme://host" in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_reverie_up_passes_its_cors_origins_to_its_server(exported_agents, pages, tmp_path):
    """`reverie up` serves in its own process with the settings its flags make: the same flag works there."""
    run_dir = tmp_path / "run"
    shutil.copytree(exported_agents["CartPole-v1"][1], run_dir / "export")  # served at once, whatever the trainer does
    port, grpc_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "reverie.cli", "up", "--run-dir", str(run_dir), "--port", str(port),
                                "--grpc-port", str(grpc_port), "--preset", "smoke", "--set", "threads=1",
                                "--cors-origin", pages[0], "--cors-origin", GAME],
                               stdout=(tmp_path / "up.log").open("w"), stderr=subprocess.STDOUT)
    try:
        def acts() -> bool:
            assert process.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.post(f"{url}/act", json={"obs": OBS}, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(acts, 60, "reverie up answering /act", interval=0.25)
        for origin in (pages[0], GAME):
            assert preflight(url, "/act", origin).headers.get("access-control-allow-origin") == origin
            answer = httpx.post(f"{url}/act", json={"obs": OBS}, headers={"Origin": origin})
            assert answer.headers.get("access-control-allow-origin") == origin
        assert "access-control-allow-origin" not in preflight(url, "/act", UNLISTED).headers
    finally:
        stop_process(process, signal.SIGTERM, 60)


FETCH = """
const [url, token, body, done] = arguments;
fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token}, body})
  .then(async (r) => done({status: r.status, body: await r.json()}))
  .catch((e) => done({error: e.name + ": " + e.message}));
"""


@pytest.mark.timeout(120)
def test_a_page_from_an_allowed_origin_can_call_the_api_in_chromium_and_others_cannot(server, pages):

    page, other_page = pages
    driver = None
    try:
        driver = chrome()
        driver.set_script_timeout(20)
        driver.set_page_load_timeout(20)

        def fetch(page: str, body: dict) -> dict:
            driver.get(page + "/")
            return driver.execute_async_script(FETCH, f"{server.url}/act", TOKEN, json.dumps(body))

        allowed = fetch(page, {"obs": OBS, "deterministic": True})
        assert allowed.get("status") == 200, allowed
        assert allowed["body"]["action"] in (0, 1) and allowed["body"]["model_version"] == 1
        refused = fetch(page, {"obs": OBS[:3]})  # an error the page can read: status and field
        assert refused.get("status") == 422 and refused["body"]["field"] == "obs", refused
        driver.get_log("browser")  # (drop what came before)
        blocked = fetch(other_page, {"obs": OBS, "deterministic": True})
        assert blocked.get("error", "").startswith("TypeError"), blocked  # the browser refused: no answer for the page
        console = " ".join(entry["message"] for entry in driver.get_log("browser"))
        assert "CORS" in console, console
        assert fetch(page, {"obs": OBS}).get("status") == 200  # the server itself was up all along
    finally:
        if driver is not None:
            driver.quit()
