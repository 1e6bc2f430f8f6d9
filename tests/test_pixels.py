"""Games from frames: pixel and Atari envs, a replay that stores each frame once, CNN models of any size
trained and exported, and image observations served in every form a game client sends them.

Real envs (pygame renders CartPole, ale-py runs Pong), the real trainer and exporter, onnxruntime
behind the real server on a loopback port, and the real clients.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from reverie.clients import game_loop
from reverie.clients import preview as preview_client
from reverie.clients.grpc_client import GrpcClient
from reverie.clients.rest import ApiError, RestClient, png_base64
from builders import pixel_run
from reverie.bundle import latest_bundle
from reverie.cli import main
from reverie.runs import RunDir
from reverie.envs import EnvSpec
from serving import ThreadServer
from reverie.service import preview
from reverie.service.runtime import Runtime
from reverie.trainer.checkpoint import load_checkpoint
from reverie.trainer.config import build_config
from reverie.trainer.replay import Replay

SPEC = EnvSpec("CartPole-v1", pixels=True, image_size=64)


def frames(spec: EnvSpec, steps: int, seed: int = 0) -> list[np.ndarray]:
    """The frames of `steps` random steps (resetting when an episode ends)."""
    env = spec.make()
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append(obs)
        if terminated or truncated:
            obs, _ = env.reset()
            out.append(obs)
    return out


def png(frame: np.ndarray, mode: str = "RGB", fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).convert(mode).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def bomb() -> str:
    """A real PNG whose header says 100000 x 100000 pixels (30 GB decoded): refused by its header."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", 100_000, 100_000)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return base64.b64encode(bytes(data)).decode()


# ---------------------------------------------------------------------------- envs and replay
@pytest.mark.parametrize("spec, shape, repeat", [(SPEC, (64, 64, 3), 2), (EnvSpec("Pendulum-v1", pixels=True), (84, 84, 3), 2),
                                                 (EnvSpec("ALE/Pong-v5"), (84, 84, 3), 4)])
def test_pixel_envs_give_frames_of_the_configured_size(spec, shape, repeat):
    """uint8 frames of the configured size from any env that renders (and from an Atari game), within
    the observation space; they move as the game does; each action is held `repeat` env steps."""
    env = spec.make()
    assert env.observation_space.shape == shape and env.observation_space.dtype == np.uint8 and spec.repeat == repeat
    shown = frames(spec, 12)
    assert all(f.shape == shape and f.dtype == np.uint8 and env.observation_space.contains(f) for f in shown)
    assert any(not np.array_equal(a, b) for a, b in zip(shown, shown[1:]))
    if spec.env_id == "CartPole-v1":  # +1 per env step: two per agent step while the pole stands
        env.reset(seed=0)
        assert env.step(0)[1] == 2.0


def test_the_replay_stores_each_frame_once():
    """One uint8 array of frames (no next_obs copy): a slot per step and one per episode's last frame,
    and every sampled next_obs is the frame the env showed after that step."""
    env, rng = SPEC.make(), np.random.default_rng(0)
    replay = Replay(1000, (64, 64, 3), (), np.uint8)
    obs, _ = env.reset(seed=0)
    shown, episodes = 0, 0
    for _ in range(120):
        action = int(rng.integers(2))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, np.asarray(action), reward, next_obs, terminated, truncated)
        shown += 1
        obs = next_obs
        if terminated or truncated:
            episodes += 1
            obs, _ = env.reset()
    assert [k for k, v in replay.data.items() if v.ndim == 4] == ["obs"] and replay.data["obs"].dtype == np.uint8
    assert replay.filled == shown + episodes + replay.open  # each episode's last frame, and the open one's next
    assert replay.bytes_per_slot < 64 * 64 * 3 + 64
    steps = replay.steps()
    later = ~steps["episode_end"][:-1]
    np.testing.assert_array_equal(steps["next_obs"][:-1][later], steps["obs"][1:][later])
    batch = replay.sample_sequences(8, 6, rng)
    assert batch["obs"].shape == (8, 6, 64, 64, 3)


@pytest.mark.parametrize("env_id, pixels", [("CartPole-v1", True), ("ALE/Pong-v5", False)])
def test_frames_bring_their_defaults_and_a_run_may_set_its_own(env_id, pixels):
    """With frames: sequence mode (memory), a 100k replay kept out of checkpoints; what a run sets stays."""
    cfg = build_config(None, [f"env_id={env_id}", f"pixels={json.dumps(pixels)}"])
    assert (cfg.sequence_mode, cfg.replay_capacity, cfg.checkpoint_replay) == (True, 100_000, False)
    cfg = build_config(None, ["pixels=true", "sequence_mode=false", "checkpoint_replay=true", "replay_capacity=5000"])
    assert (cfg.sequence_mode, cfg.replay_capacity, cfg.checkpoint_replay) == (False, 5000, True)
    assert (build_config().sequence_mode, build_config().checkpoint_replay) == (False, True)


def test_a_replay_that_would_not_fit_is_refused_before_training(tmp_path, capsys):
    code = main(["train", "--preset", "smoke", "--steps", "10", "--run-dir", str(tmp_path), "--set", "pixels=true",
                 "--set", "replay_capacity=100000000"])
    err = capsys.readouterr().err
    assert code == 2 and "replay_capacity 100,000,000 needs 1973.5 GiB" in err and "per 100k steps" in err
    assert not (tmp_path / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- models at any size
@pytest.mark.slow  # trains, or runs real processes for tens of seconds
@pytest.mark.parametrize("size", [96, 64])
def test_pixel_models_of_any_size_train_and_export(size, pixel_agent, tmp_path):
    """A run from frames of `size` trains, evaluates and publishes a bundle whose graphs match torch on
    the env's frames (within 1e-4); the 64x64 run is the one the serving tests use (`pixel_agent`)."""
    if size == 64:
        agent, run_dir = pixel_agent[0], pixel_agent[2]
    else:
        trainer = pixel_run(tmp_path, size)
        trainer.publish_bundle()
        agent, run_dir = trainer.agent, tmp_path
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["updates"] > 0 and rows[-1]["eval_return"] > 0
    # per pixel and channel on [0, 1] (summed over a frame it would be thousands)
    assert all(0 < row["decoder_loss"] < 5 for row in rows if "decoder_loss" in row)
    saved = load_checkpoint(RunDir(run_dir).latest_checkpoint())
    assert saved.get("replay") is None and RunDir(run_dir).latest_checkpoint().stat().st_size < 5e6  # frames stay out
    runtime = Runtime.load(latest_bundle(run_dir / "export"))
    assert runtime.manifest.observation_space.shape == [size, size, 3] and runtime.manifest.pixels
    shown = np.stack(frames(EnvSpec("CartPole-v1", pixels=True, image_size=size), 3)[:4]).astype(np.float32)
    with torch.no_grad():
        states = agent.world_model.encode(torch.as_tensor(shown))
        decoded = agent.world_model.decode(states)
    np.testing.assert_allclose(runtime.encode(shown)[:, : agent.cfg.state_dim], states.numpy(), atol=1e-4)
    np.testing.assert_allclose(runtime.decode(runtime.encode(shown)), decoded.numpy(), atol=1e-3)  # pixel units
    assert decoded.shape == (4, size, size, 3)


# ---------------------------------------------------------------------------- serving
@pytest.fixture(scope="module")
def server(pixel_agent):
    with ThreadServer(pixel_agent[1], max_body_bytes=256 * 1024) as server:
        yield server


def torch_probs(agent, frame: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        state = agent.world_model.encode(torch.as_tensor(frame[None], dtype=torch.float32))
        return agent.policy(agent.world_model.belief(state)).probs[0].numpy()


@pytest.mark.slow  # its fixture trains a run
def test_every_image_form_gives_the_torch_agents_answer(pixel_agent, server):
    """JSON numbers, raw base64 pixels, a PNG file, and gRPC's raw bytes: the torch agent's probabilities
    on real frames; a JPEG is answered as its decoded pixels are."""
    agent = pixel_agent[0]
    shown = frames(SPEC, 3)
    with RestClient(server.url, image_format="png") as as_png, RestClient(server.url, image_format="raw") as as_raw, \
            RestClient(server.url, image_format="json") as as_json, GrpcClient(server.grpc_target) as as_bytes:
        for frame in shown:
            expected = torch_probs(agent, frame)
            for client in (as_png, as_raw, as_json, as_bytes):
                np.testing.assert_allclose(client.act(frame).probs, expected, atol=1e-4)
        jpeg = png(shown[1], fmt="JPEG")
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(jpeg))))
        assert not np.array_equal(decoded, shown[1])  # lossy: the answer is the decoded frame's
        answer = httpx.post(f"{server.url}/act", json={"obs": {"image": jpeg}}).json()
        np.testing.assert_allclose(answer["probs"], torch_probs(agent, decoded), atol=1e-4)
        batch = httpx.post(f"{server.url}/value", json={"observations": [{"image": png_base64(f)} for f in shown]}).json()
        assert len(batch["values"]) == len(shown)
        upload = httpx.post(f"{server.url}/act", files={"obs": ("frame.png", base64.b64decode(png(shown[1])), "image/png")},
                            data={"deterministic": "true", "seed": "3"}).json()  # curl -F obs=@frame.png
        np.testing.assert_allclose(upload["probs"], torch_probs(agent, shown[1]), atol=1e-4)
        uploads = [("observations", (f"{i}.png", base64.b64decode(png(f)), "image/png")) for i, f in enumerate(shown)]
        assert httpx.post(f"{server.url}/value", files=uploads).json()["values"] == pytest.approx(batch["values"], abs=1e-5)


def bad_images(frame: np.ndarray) -> list[tuple[dict, str, str]]:
    raw = base64.b64encode(frame.tobytes()).decode()
    return [
        ({"image": png(frame[:32])}, "obs.image", "expected a 64x64 image"),
        ({"image": png(frame, "RGBA")}, "obs.image", "got mode RGBA"),
        ({"image": png(frame, "L")}, "obs.image", "got mode L"),
        ({"image": "not base64!"}, "obs.image", "expected base64"),
        ({"image": base64.b64encode(b"GIF89a" + bytes(100)).decode()}, "obs.image", "not a PNG or JPEG"),
        ({"image": png(frame)[:200]}, "obs.image", "could not be decoded"),
        ({"image": bomb()}, "obs.image", "decompression bomb"),
        ({"data": raw, "shape": [64, 64, 4]}, "obs.shape", "expected [64, 64, 3]"),
        ({"data": raw[:-8], "shape": [64, 64, 3]}, "obs.data", "needs 12288"),
        ({"data": raw, "shape": [64, 64, 3], "dtype": "uint8"}, "obs.dtype", "Extra inputs"),
        (np.full((64, 64, 3), 300).tolist(), "obs", "[0, 255]"),
    ]


def test_bad_images_are_422_naming_the_field_and_the_server_keeps_serving(server):
    frame = frames(SPEC, 0)[0]
    for obs, field, message in bad_images(frame):
        answer = httpx.post(f"{server.url}/act", json={"obs": obs})
        assert answer.status_code == 422 and answer.json()["field"] == field, (field, answer.text)
        assert message in answer.json()["detail"], (message, answer.text)
        assert httpx.post(f"{server.url}/act", json={"obs": {"image": png(frame)}}).status_code == 200
    uploads = [({"files": {"obs": ("f.png", b"GIF89a", "image/gif")}}, "obs.image", "not a PNG or JPEG"),
               ({"files": {"obs": ("f.png", base64.b64decode(png(frame)), "image/png")}, "data": {"reset": "yes"}},
                "reset", "valid boolean"),
               ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, "body", "malformed")]
    for request, field, message in uploads:
        answer = httpx.post(f"{server.url}/act", **request)
        assert answer.status_code == 422 and answer.json()["field"] == field and message in answer.json()["detail"], answer.text
    history = httpx.post(f"{server.url}/act", json={"obs": {"image": png(frame)},
                                                     "history": {"observations": [{"image": "x"}], "actions": [0]}})
    assert history.status_code == 422 and history.json()["field"] == "history.observations[0].image"
    with GrpcClient(server.grpc_target) as client:
        for bad in (frame[:, :32], np.concatenate([frame, frame[..., :1]], -1), frame.astype(np.float32) * 2):
            with pytest.raises(ApiError) as err:
                client.act(bad)
            assert err.value.status == "INVALID_ARGUMENT" and err.value.field == "obs", err.value
        assert client.act(frame).model_version == 1


def observation_forms(document: dict) -> list:
    return document["components"]["schemas"]["ActRequest"]["properties"]["obs"].get("anyOf", ["numbers"])


def test_the_document_states_the_image_forms_for_image_models_only(server, exported_agents):
    """An image model's OpenAPI document offers numbers, a file and raw pixels of its shape (or an upload),
    and no GET /imagine (a frame is no query string); a vector model's offers numbers and no GIF preview,
    and refuses an image and a GIF."""
    document = httpx.get(f"{server.url}/openapi.json").json()
    numbers, file, raw = observation_forms(document)
    assert numbers["maxItems"] == 64 and file == {"$ref": "#/components/schemas/EncodedImage"}
    assert raw["properties"]["shape"] == {"const": [64, 64, 3]} and "get" not in document["paths"]["/imagine"]
    upload = document["paths"]["/act"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["obs"]["format"] == "binary" and "session" in upload["properties"]
    with ThreadServer(exported_agents["CartPole-v1"][1]) as vector:
        vector_document = httpx.get(f"{vector.url}/openapi.json").json()
        assert observation_forms(vector_document) == ["numbers"]
        assert list(vector_document["paths"]["/act"]["post"]["requestBody"]["content"]) == ["application/json"]
        assert vector_document["components"]["schemas"]["ImagineRequest"]["properties"]["format"]["enum"] == ["json", "png"]
        gif = httpx.post(f"{vector.url}/imagine", json={"obs": [0.0] * 4, "format": "gif"})
        assert gif.status_code == 422 and gif.json()["field"] == "format"
        answer = httpx.post(f"{vector.url}/act", json={"obs": {"image": png(np.zeros((8, 8, 3), np.uint8))}})
    assert answer.status_code == 422 and answer.json()["field"] == "obs" and "vector observations" in answer.json()["detail"]


def test_the_filmstrip_has_a_row_per_sample_and_its_frames_move(server):
    """POST /imagine format=png: samples x (horizon + 1) decoded frames at twice their size, captioned;
    consecutive imagined frames differ. format=gif: one animation frame per imagined state."""
    body = {"obs": {"image": png(frames(SPEC, 0)[0])}, "horizon": 5, "samples": 2, "seed": 3}
    strip = Image.open(io.BytesIO(httpx.post(f"{server.url}/imagine", json=body | {"format": "png"}).content))
    cell_w, cell_h = 2 * 64 + preview.GAP, 2 * 64 + preview.CAPTION + preview.GAP
    assert strip.format == "PNG" and strip.size == (preview.GAP + 6 * cell_w, preview.HEADER + preview.GAP + 2 * cell_h)
    pixels = np.asarray(strip.convert("RGB"))
    top = preview.HEADER + preview.GAP
    cells = [pixels[top:top + 128, preview.GAP + t * cell_w:preview.GAP + t * cell_w + 128] for t in range(6)]
    assert all(not np.array_equal(a, b) for a, b in zip(cells, cells[1:]))
    assert cells[0].std() > 0  # a picture, not a blank cell
    gif = Image.open(io.BytesIO(httpx.post(f"{server.url}/imagine", json=body | {"format": "gif"}).content))
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.size[1] == strip.size[1]


def test_the_preview_client_saves_the_filmstrip_and_its_animation(server, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert preview_client.main(["--url", server.url, "--samples", "2", "--horizon", "4", "--out", str(out)]) == 0
    assert Image.open(out).format == "PNG" and Image.open(tmp_path / "preview.gif").n_frames == 5
    assert "preview.gif" in capsys.readouterr().out


def test_the_game_loop_plays_frames_as_reverie_eval_does(pixel_agent, server, capsys):
    """The bundle's own evaluation and the game loop over REST with PNG frames and over gRPC with raw
    bytes (an ActStream) play the same episodes action for action: the same returns."""
    assert main(["eval", "--bundle", str(pixel_agent[1]), "--episodes", "3", "--seed", "7"]) == 0
    evaluated = float(capsys.readouterr().out.split("mean return ")[1].split()[0])
    summaries = []
    for args in (["--url", server.url], ["--transport", "grpc", "--target", server.grpc_target, "--stream"]):
        assert game_loop.main(args + ["--episodes", "3", "--seed", "7", "--json"]) == 0
        summaries.append(json.loads(capsys.readouterr().out))
    assert [s["transport"] for s in summaries] == ["rest", "grpc-stream"]
    assert all(s["mean_return"] == pytest.approx(evaluated, abs=0.01) for s in summaries), (evaluated, summaries)

