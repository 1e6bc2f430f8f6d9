"""`reverie up` as a person sees it: it answers `/act` at once, follows training with newer versions,
shows it all on the live page in a real browser, and stops cleanly. One `reverie up` (smoke preset, a
bearer token set) and headless Chromium (Debian's `chromium` and `chromium-driver`; `.ci/run` installs
them). The page loads in under a second, asks for the token before it asks for any data, then draws
curves with points, shows the version that `/model` serves, follows a newer export without a reload,
and renders the imagination panel; the browser's console holds no error. The screenshot and the load time are kept: $REVERIE_ARTIFACTS/live_page.png
and live_page.json, or in the test's temporary folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loopback import free_ports, wait_until

from serving import chrome

TOKEN = "page-s3cret"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_reverie_up_serves_at_once_shows_training_live_and_stops_cleanly(tmp_path):
    from selenium.webdriver.common.by import By

    port, grpc_port = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "reverie.cli", "up", "--run-dir", str(tmp_path / "run"), "--port", str(port),
               "--grpc-port", str(grpc_port), "--preset", "smoke", "--set", "threads=1",
               "--follow", "latest"]  # every newer export, not BEST only: the page must show one while the test waits
    log = (tmp_path / "up.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "REVERIE_API_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    driver, trainer_pids = None, []
    try:
        started = time.monotonic()

        def acts() -> bool:
            assert process.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return httpx.post(f"{url}/act", json={"obs": [0.0] * 4}, headers=auth, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(acts, 60, "/act answering", interval=0.25)
        first_answer_s = time.monotonic() - started
        first = httpx.get(f"{url}/model", headers=auth).json()
        assert httpx.get(f"{url}/live").status_code == 401  # the data wants the token
        driver = chrome()
        driver.get(f"{url}/")
        load_ms = driver.execute_script("const t = performance.getEntriesByType('navigation')[0]; return t.loadEventEnd - t.startTime;")
        driver.execute_script("window.notReloaded = true;")
        form = driver.find_element(By.ID, "token")
        wait_until(form.is_displayed, 10, "the token prompt")
        driver.find_element(By.ID, "token-value").send_keys(TOKEN)
        driver.find_element(By.CSS_SELECTOR, "#token button").click()

        def points() -> list[int]:
            return [int(c.get_attribute("data-points")) for c in driver.find_elements(By.CSS_SELECTOR, ".chart")]

        wait_until(lambda: points() and min(points()) >= 2, 90, "curves with points", interval=0.5)
        served = lambda: driver.find_element(By.ID, "served").get_attribute("data-version")  # noqa: E731
        wait_until(lambda: served() == str(httpx.get(f"{url}/model", headers=auth).json()["model_version"]), 20,
                   "the page's served version equal to /model's", interval=0.5)
        shown = int(served())
        wait_until(lambda: int(served() or 0) > shown, 90, "a newer export on the page", interval=0.5)
        assert driver.execute_script("return window.notReloaded === true;")  # followed without a reload
        driver.find_element(By.ID, "imagine").click()
        wait_until(lambda: driver.execute_script(
            "const i = document.querySelector('#preview img'); return i !== null && i.complete && i.naturalWidth > 0;"),
            20, "the imagination panel's picture", interval=0.25)
        artifacts = Path(os.environ.get("REVERIE_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "live_page.png"))
        (artifacts / "live_page.json").write_text(json.dumps({"load_ms": load_ms, "served_version": served()}))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        assert load_ms < 1000, f"the page took {load_ms:.0f} ms to load"
        assert driver.find_element(By.ID, "error").text == ""
        later = httpx.get(f"{url}/model", headers=auth).json()  # training went on, and the bundles with it
        assert later["model_version"] >= first["model_version"] + 1
        assert later["training"]["env_step"] > (first["training"] or {}).get("env_step", 0)
        assert later["manifest"]["training_step"] > first["manifest"]["training_step"]
        assert later["manifest"]["last_eval_return"] is not None
        trainer_pids = subprocess.run(["pgrep", "-f", f"train --run-dir {tmp_path / 'run'}"], capture_output=True,
                                      text=True).stdout.split()
        assert len(trainer_pids) == 1
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = "still running 60 s after SIGTERM"
        assert code == 0, (tmp_path / "up.log").read_text()
    finally:
        if driver is not None:
            driver.quit()
        if process.poll() is None:
            process.kill()
    assert first_answer_s < 60
    assert not os.path.exists(f"/proc/{trainer_pids[0]}") or "Z" in open(f"/proc/{trainer_pids[0]}/stat").read().split()[2]
