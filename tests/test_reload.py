"""Hot reload: new versions swap in under load without a failed request; broken ones are refused."""

from __future__ import annotations

import threading

import httpx
import pytest

from reverie.clients.rest import RestClient
from reverie.bundle import latest_bundle, versions
from loopback import wait_until
from serving import ProcessServer, publish_broken, publish_copy
from reverie.service.store import ModelStore

OBS = [0.02, -0.3, 0.05, 0.4]
VERSIONS = 22  # 1 to start with, then 21 more (two broken ones among them)


@pytest.mark.slow
@pytest.mark.parametrize("memory", [False, True], ids=["flat", "memory"])
def test_hot_reload_under_load_never_fails_a_request(memory, tmp_path, exported_agents, memory_agent):
    """Three clients act in a loop while 21 versions are published; with an agent with memory, one
    sends its history, one acts in a session (which lives on across every reload), one sends neither."""
    source = latest_bundle(memory_agent[1] if memory else exported_agents["CartPole-v1"][1])
    obs = [0.02, 0.05] if memory else OBS
    memories = [{"history": ([obs, obs], [0, 1])}, {"session": "reloaded"}, {}] if memory else [{}, {}, {}]
    export_dir = tmp_path / "export"
    publish_copy(source, export_dir)
    with ProcessServer(export_dir, poll_interval=0.05) as server:
        stop = threading.Event()
        seen: list[list[int]] = [[] for _ in range(3)]
        steps: list[int | None] = []  # client 1's session steps
        failures: list[str] = []

        def client_loop(i: int) -> None:
            with RestClient(server.url) as client:
                while not stop.is_set():
                    try:
                        answer = client.act(obs, seed=i, **memories[i])
                        seen[i].append(answer.model_version)
                        if i == 1:
                            steps.append(answer.session_step)
                    except Exception as err:  # any failure at all is what this test is about
                        failures.append(repr(err))

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(len(seen))]
        for t in threads:
            t.start()
        wait_until(lambda: all(seen), 10, "every client answered by version 1")
        broken = {}
        for version in range(2, VERSIONS + 1):
            if version in (8, 15):
                broken[version] = publish_broken(source, export_dir, "checksum" if version == 8 else "truncated")
                wait_until(lambda: f"refused bundle {broken[version].name}" in server.output(), 10, "refusal logged")
            else:
                publish_copy(source, export_dir)
                wait_until(lambda: max(seen[0][-1:] or [0]) >= version, 10, f"version {version} served")
            assert all(s and s[-1] not in broken for s in seen), "a broken version answered"
        stop.set()
        for t in threads:
            t.join()
        model = httpx.get(f"{server.url}/model").json()
    assert failures == []
    served = set().union(*map(set, seen))
    assert served == set(range(1, VERSIONS + 1)) - set(broken), "every good version served, no broken one"
    assert len(served) >= 20
    for answered in seen:
        assert all(a <= b for a, b in zip(answered, answered[1:])), "a client saw versions go backwards"
    assert model["model_version"] == VERSIONS
    assert {r["bundle"].rsplit("/", 1)[1] for r in model["refused"]} == {b.name for b in broken.values()}
    reasons = " ".join(r["reason"] for r in model["refused"])
    assert "checksum mismatch" in reasons and "onnxruntime cannot load" in reasons
    assert sum(map(len, seen)) > 100
    if memory:  # never reset nor expired, the session counted every step through every reload
        assert steps == list(range(len(steps)))


def test_a_broken_newest_bundle_at_start_falls_back_to_the_newest_good_one(tmp_path, exported_agents):
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    export_dir = tmp_path / "export"
    publish_copy(source, export_dir)
    publish_copy(source, export_dir)
    publish_broken(source, export_dir, "truncated")
    store = ModelStore(export_dir)
    assert store.poll() and store.current.version == 2 and store.refusals == 1
    assert not store.poll(), "a refused bundle is not retried until it changes"
    publish_copy(source, export_dir)
    assert store.poll() and store.current.version == 4


def test_best_pointer_follows_the_highest_eval_and_survives_pruning(tmp_path, exported_agents):
    """BEST names the best-evaluated version (ties to the newer); pruning keeps it; a store can follow it."""
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    export_dir = tmp_path / "export"
    publish_copy(source, export_dir, keep=2, last_eval_return=None)
    assert latest_bundle(export_dir, "best") == export_dir / "v000001", "no eval yet: BEST falls back to LATEST"
    store = ModelStore(export_dir, follow="best")
    assert store.poll() and store.current.version == 1
    for eval_return in (100.0, 300.0, 200.0, 250.0):
        publish_copy(source, export_dir, keep=2, last_eval_return=eval_return)
    assert (export_dir / "BEST").read_text() == "v000003" and (export_dir / "LATEST").read_text() == "v000005"
    assert versions(export_dir) == [3, 4, 5], "the last two are kept, and BEST"
    assert store.poll() and store.current.version == 3
    publish_copy(source, export_dir, keep=2, last_eval_return=300.0)
    assert store.poll() and store.current.version == 6 and versions(export_dir) == [5, 6]
    latest = ModelStore(export_dir)
    assert latest.poll() and latest.current.version == 6
