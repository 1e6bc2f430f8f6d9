"""The example clients and the served document, against a real server on loopback (fast tier).

The trained-agent versions (the game loop reaching 475 over the network) are in test_serving_e2e.py;
here an untrained bundle answers, which is enough to hold the clients' and the document's contracts.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from reverie.clients import game_loop, preview
from serving import ThreadServer


@pytest.fixture(scope="module")
def cartpole(exported_agents):
    with ThreadServer(exported_agents["CartPole-v1"][1], max_batch=8) as server:
        yield server


@pytest.mark.parametrize("transport", [["--transport", "rest"], ["--transport", "grpc", "--stream"]], ids=["rest", "grpc-stream"])
def test_the_game_loop_plays_whole_episodes_one_request_per_step(cartpole, transport, capsys):
    code = game_loop.main(["--url", cartpole.url, "--target", cartpole.grpc_target, *transport, "--episodes", "2",
                           "--seed", "3", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["env_id"] == "CartPole-v1" and summary["episodes"] == 2
    assert summary["requests"] == sum(summary["returns"]) > 0  # CartPole pays 1 per step: one request each
    assert summary["model_versions"] == [1]


def test_the_preview_client_saves_the_picture(cartpole, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert preview.main(["--url", cartpole.url, "--samples", "2", "--horizon", "5", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "lambda-return" in capsys.readouterr().out


def test_the_document_carries_the_served_bundles_shapes_and_limits(cartpole):
    document = httpx.get(f"{cartpole.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    obs = schemas["ActRequest"]["properties"]["obs"]
    assert (obs["minItems"], obs["maxItems"], obs["items"]["type"]) == (4, 4, "number")
    assert schemas["ActRequest"]["properties"]["observations"]["maxItems"] == 8  # this server's max_batch
    imagine = schemas["ImagineRequest"]["properties"]
    assert imagine["horizon"]["maximum"] == 64 and imagine["actions"]["items"] == {"type": "integer", "minimum": 0, "maximum": 1}
    get_obs = next(p for p in document["paths"]["/imagine"]["get"]["parameters"] if p["name"] == "obs")
    pattern = re.compile(get_obs["schema"]["pattern"])
    assert pattern.match("0.1,0,-0.02,3e-4") and not pattern.match("0.1,0,-0.02")  # four numbers, for CartPole


class DroppingRelay:
    """A TCP relay on loopback to `port` that closes its first `drop` connections unanswered, as a
    replica killed mid-request (or a balancer in front of one) does."""

    def __init__(self, port: int, drop: int):
        import socket
        import threading

        self.port, self.drop, self.accepted = port, drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import socket
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drop:
                conn.recv(65536)  # the request arrives, and no answer ever will
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.listener.close()


def test_the_rest_client_resends_what_is_safe_to_resend_and_nothing_else(exported_agents):
    """A request whose connection dies unanswered is sent again (another connection, another replica
    behind a balancer) when repeating it changes nothing; a session's act, which moves the session, is not."""
    from reverie.clients.rest import RestClient

    with ThreadServer(exported_agents["CartPole-v1"][1]) as served:
        port = int(served.url.rsplit(":", 1)[1])
        relay = DroppingRelay(port, drop=2)
        with RestClient(relay.url, retries=2) as client:
            assert client.act([0.0, 0.1, 0.0, 0.0], deterministic=True).model_version == 1  # third try answered
            assert relay.accepted == 3
        relay.close()
        relay = DroppingRelay(port, drop=1)
        with RestClient(relay.url, retries=2) as client:
            with pytest.raises(httpx.TransportError):
                client.act([0.0, 0.1, 0.0, 0.0], session="once", reset=True)
            assert relay.accepted == 1  # not resent
            assert client.act([0.0, 0.1, 0.0, 0.0], session="once", reset=True).session_step == 0
        relay.close()


def test_the_grpc_client_resends_what_is_safe_to_resend_and_nothing_else(exported_agents):
    from reverie.clients.grpc_client import GrpcClient

    with ThreadServer(exported_agents["CartPole-v1"][1]) as served:
        port = int(served.grpc_target.rsplit(":", 1)[1])
        relay = DroppingRelay(port, drop=1)
        with GrpcClient(f"127.0.0.1:{relay.url.rsplit(':', 1)[1]}", retries=3) as client:
            assert client.act([0.0, 0.1, 0.0, 0.0], deterministic=True).model_version == 1
            assert relay.accepted == 2  # the dropped connection, then the one that answered
        relay.close()
        relay = DroppingRelay(port, drop=1)
        with GrpcClient(f"127.0.0.1:{relay.url.rsplit(':', 1)[1]}", retries=3) as client:
            with pytest.raises(Exception, match="UNAVAILABLE"):
                client.act([0.0, 0.1, 0.0, 0.0], session="once", reset=True)
            assert relay.accepted == 1  # not resent
        relay.close()
