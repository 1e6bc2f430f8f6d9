"""Bundles on object storage against a real S3 server on loopback (SeaweedFS): the publisher's layout
and order, the mirror's one-request poll, serving and hot reload from s3://, a corrupted object
refused, a store that goes away and comes back, and the errors that stop a start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import httpx
import pytest

from loopback import S3Server, free_ports, wait_until
from reverie.bundle import latest_bundle, load_manifest, versions
from reverie.clients.rest import RestClient
from reverie.objectstore import Mirror, Publisher
from serving import ProcessServer, publish_broken, publish_copy

OBS = [0.02, -0.3, 0.05, 0.4]


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


def store_for(server: S3Server, monkeypatch, request) -> str:
    """The AWS variables of `server`, and a prefix of this test's own in its one bucket: the s3:// URL.
    (One bucket for all: SeaweedFS gives each bucket volumes of its own.)"""
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{server.bucket('reverie')}/{request.node.name[:60]}/agents/cartpole"


@pytest.fixture
def store(s3, monkeypatch, request):
    return store_for(s3, monkeypatch, request)


def put_order(publisher: Publisher) -> list[str]:
    """Every key the publisher writes, in order (boto3's own event hook, on the real client)."""
    keys: list[str] = []
    publisher.store.client.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: keys.append(params["Key"]))
    return keys


def test_the_store_holds_the_export_layout_written_pointers_last_and_a_mirror_follows_it(store, s3, exported_agents, tmp_path):
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    export = tmp_path / "export"
    publish_copy(source, export, last_eval_return=20.0)
    publisher = Publisher(store)
    written = put_order(publisher)
    assert publisher.push(export) == ["v000001"]
    graphs = sorted(p.name for p in (export / "v000001").iterdir() if p.name != "manifest.json")
    prefix = store.split("/", 3)[3] + "/"
    assert written == [prefix + f"v000001/{name}" for name in graphs] + [
        prefix + name for name in ("v000001/manifest.json", "evaluations.json", "BEST", "LATEST")]
    assert publisher.push(export) == []  # nothing new: pointers rewritten, no version again

    mirror = Mirror(store, tmp_path / "mirror")
    assert mirror.sync() is True
    mirrored = latest_bundle(mirror.folder)
    assert mirrored.name == "v000001" and load_manifest(mirrored).model_version == 1  # checksums verified
    assert latest_bundle(mirror.folder, "best") == mirrored
    before = mirror.store.requests
    assert mirror.sync() is False and mirror.store.requests == before + 1  # one listing when nothing changed

    publish_copy(source, export)  # v2, then v1 pruned locally: the store follows, and the mirror too
    shutil.rmtree(export / "v000001")
    assert publisher.push(export) == ["v000002"]
    assert mirror.sync() is True
    assert versions(mirror.folder) == [2] and latest_bundle(mirror.folder).name == "v000002"
    listed = s3.client().list_objects_v2(Bucket=store.split("/")[2], Prefix=prefix)["Contents"]
    assert not [o["Key"] for o in listed if "v000001" in o["Key"]]


@pytest.mark.slow  # load, a corrupted version and an outage, on a server of its own
def test_serving_from_the_store_reloads_under_load_refuses_a_corrupted_version_and_outlives_the_store(
        exported_agents, tmp_path, monkeypatch, request):
    with S3Server() as own:  # its own server: this test stops and restarts it
        serve_through_an_outage(own, store_for(own, monkeypatch, request), exported_agents, tmp_path)


def serve_through_an_outage(s3: S3Server, store: str, exported_agents, tmp_path) -> None:
    source = latest_bundle(exported_agents["CartPole-v1"][1])
    export = tmp_path / "export"
    publisher = Publisher(store)
    publish_copy(source, export)
    publisher.push(export)
    with ProcessServer(store, env=s3.env, poll_interval=0.1) as server:
        stop, seen, failures, by_client = threading.Event(), [], [], ([], [])

        def client_loop(mine: list) -> None:
            with RestClient(server.url) as client:
                while not stop.is_set():
                    try:
                        version = client.act(OBS, seed=1).model_version
                        mine.append(version)
                        seen.append(version)
                    except Exception as err:  # any failure at all is what this test is about
                        failures.append(repr(err))

        clients = [threading.Thread(target=client_loop, args=(mine,)) for mine in by_client]
        for thread in clients:
            thread.start()
        wait_until(lambda: seen, 30, "version 1 served from the store")
        publish_copy(source, export)
        publisher.push(export)
        wait_until(lambda: seen[-1] == 2, 30, "version 2 served")

        broken = publish_broken(source, export, "checksum")  # v3: a graph that does not match its checksum
        publisher.push(export)
        wait_until(lambda: f"refused bundle {broken.name}" in server.output(), 30, "the corrupted version refused")

        s3.stop()  # the store goes away: what is loaded stays served, the poll keeps trying
        wait_until(lambda: "object store unavailable" in server.output(), 30, "the outage logged")
        answered = len(seen)
        wait_until(lambda: len(seen) > answered + 50, 30, "answers while the store is away")
        s3.start()
        publish_copy(source, export)  # v4, published once the store is back
        wait_until(lambda: _pushed(publisher, export), 30, "the store accepting writes again")
        wait_until(lambda: seen[-1] == 4, 30, "version 4 served after the store came back")
        stop.set()
        for thread in clients:
            thread.join()
        model = httpx.get(f"{server.url}/model").json()
    assert failures == []
    # Versions only move forward for each client; the two clients' answers interleave in `seen`.
    assert set(seen) == {1, 2, 4} and all(mine == sorted(mine) for mine in by_client)
    assert [r["bundle"].rsplit("/", 1)[1] for r in model["refused"]] == [broken.name]
    assert "checksum mismatch" in model["refused"][0]["reason"]


def _pushed(publisher: Publisher, export) -> bool:
    try:
        publisher.push(export)
        return True
    except Exception:  # noqa: BLE001 - the gateway answers before its filer is ready
        return False


@pytest.mark.parametrize("case, expected", [
    ("no bucket", "bucket 'no-such-bucket' does not exist"),
    ("wrong secret", "credentials refused"),
    ("unreachable", "cannot reach the object store"),
])
def test_a_store_that_cannot_be_used_stops_the_start_with_its_reason(case, expected, s3):
    env = dict(s3.env)
    url = "s3://no-such-bucket/agents" if case == "no bucket" else f"s3://{s3.bucket('reverie')}/start-checks"
    if case == "wrong secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    if case == "unreachable":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_ports(1)[0]}"
    done = subprocess.run([sys.executable, "-m", "reverie.cli", "serve", "--models", url, "--port", "0", "--grpc-port", "0"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "reverie serve: s3://" in done.stderr and expected in done.stderr, done.stderr


@pytest.mark.slow
def test_a_training_run_publishes_every_version_it_exports(store, s3, tmp_path):
    """`reverie train --publish`: the store holds the run's export folder as it stands at the end."""
    from builders import small_config
    from reverie.trainer.loop import Trainer

    Trainer(small_config(total_steps=120, warmup_steps=40, transition_steps=40, eval_every=60, eval_episodes=1,
                         export_every=60, export_keep=2), tmp_path / "run", export=True, publish=store).run()
    export = tmp_path / "run" / "export"
    mirror = Mirror(store, tmp_path / "mirror")
    assert mirror.sync() is True
    assert (mirror.folder / "LATEST").read_text() == (export / "LATEST").read_text() == "v000003"
    assert load_manifest(latest_bundle(mirror.folder)).training_step == 120
    bucket, prefix = store.split("/")[2], store.split("/", 3)[3] + "/"
    listed = {o["Key"][len(prefix):].split("/")[0] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert {name for name in listed if name.startswith("v")} == {f"v{v:06d}" for v in versions(export)}  # pruned ones gone


def test_a_trainer_told_to_publish_where_it_cannot_stops_at_start(s3, tmp_path, monkeypatch):
    from reverie.cli import main

    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--preset", "smoke", "--steps", "10", "--run-dir", str(tmp_path / "run"),
                 "--publish", "s3://no-such-bucket/agents"]) == 2
