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
