"""The live page's data: `GET /live` carries the run's curves, phases and failure modes as the trainer
wrote them, the versions served and exported, and per-endpoint request counts and latency; `GET /` is
the page itself, which holds no data, so it loads without the token the data endpoints want."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from reverie.clients.rest import RestClient
from reverie.bundle import versions
from reverie.runs import MetricRows, RunDir
from reverie.service.live import _quantile, thin
from serving import ThreadServer

OBS = [0.01, 0.02, 0.03, 0.04]


@pytest.mark.slow  # trained_cartpole: a run trained to 475
def test_live_carries_the_runs_curves_and_what_is_served(trained_cartpole):
    rows = RunDir(trained_cartpole).metrics()
    config = json.loads((trained_cartpole / "config.json").read_text())
    with ThreadServer(trained_cartpole) as server, RestClient(server.url) as client:
        for _ in range(20):
            client.act(OBS)
        page = httpx.get(f"{server.url}/")
        live = httpx.get(f"{server.url}/live").json()
        served = client.model()["manifest"]["model_version"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch(path' in page.text and "/live" in page.text  # the page asks /live for its data
    training = live["training"]
    assert training["env_id"] == "CartPole-v1" and training["rows"] == len(rows)
    assert training["curves"]["env_step"] == [r["env_step"] for r in rows]
    assert training["curves"]["eval_return"] == [r.get("eval_return") for r in rows]
    assert training["phases"] == {"transition": config["warmup_steps"],
                                  "full": config["warmup_steps"] + config["transition_steps"]}
    assert training["status"]["env_step"] == rows[-1]["env_step"]
    serving = live["serving"]
    assert serving["served_version"] == served == versions(trained_cartpole / "export")[-1] == serving["newest_version"]
    manifest = json.loads((trained_cartpole / "export" / f"v{served:06d}" / "manifest.json").read_text())
    assert serving["served_eval"] == manifest["last_eval_return"] is not None  # the evaluation it was exported with
    (act,) = [e for e in serving["endpoints"] if e["endpoint"] == "/act"]
    assert act["transport"] == "http" and act["requests"] == 20 and act["errors"] == 0
    assert 0 < act["p50_ms"] <= act["p99_ms"] < 2500


def test_the_data_wants_the_token_and_the_page_does_not(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], api_token="s3cret") as server:
        assert httpx.get(f"{server.url}/").status_code == 200
        assert httpx.get(f"{server.url}/live").status_code == 401
        answer = httpx.get(f"{server.url}/live", headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 200 and answer.json()["training"] is None  # a bare export folder: no run
    assert answer.json()["serving"]["served_version"] == 1


def test_metric_rows_are_read_on_from_where_the_last_read_stopped(tmp_path):
    """The live page's reader parses only what was added, never half a line, and restores what JSON
    cannot hold (a NaN loss is written "nan") as the trainer's own reader does."""
    path, reader = tmp_path / "metrics.jsonl", MetricRows()
    path.write_text('{"env_step": 1}\n{"env_step": 2}\n{"env_st')  # the trainer is mid-line
    assert [r["env_step"] for r in reader.read(RunDir(tmp_path))] == [1, 2]
    with open(path, "a") as f:
        f.write('ep": 3, "critic_loss": "nan", "actor_grad_norm": "inf"}\n')
    rows = reader.read(RunDir(tmp_path))
    assert [r["env_step"] for r in rows] == [1, 2, 3]
    assert math.isnan(rows[2]["critic_loss"]) and rows[2]["actor_grad_norm"] == math.inf
    assert str(RunDir(tmp_path).metrics()) == str(rows)
    path.write_text('{"env_step": 7}\n')  # a new run in the same place
    assert [r["env_step"] for r in reader.read(RunDir(tmp_path))] == [7]


def test_thinning_keeps_the_first_and_the_newest_rows_evenly():
    rows = [{"i": i} for i in range(1001)]
    kept = thin(rows, 11)
    assert [r["i"] for r in kept] == list(range(0, 1001, 100))
    assert thin(rows[:5], 11) == rows[:5]


@pytest.mark.parametrize("q, expected", [(0.5, 0.00125), (0.99, 0.00485)])
def test_latency_quantiles_come_from_the_histograms_buckets(q, expected):
    # 100 requests: 40 under 1 ms, 40 between 1 and 2 ms, 20 between 2 and 5 ms.
    buckets = [(0.001, 40), (0.002, 80), (0.005, 100), (float("inf"), 100)]
    assert _quantile(buckets, 100, q) == pytest.approx(expected)
