"""ONNX export: every graph agrees with torch, bundles publish atomically and are verified."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from builders import small_config
from reverie.bundle import FORMAT_VERSION, POINTER, BundleError, latest_bundle, load_manifest, versions
from reverie.trainer.agent import Agent
from reverie.trainer.envs import make_env, space_info
from reverie.trainer.export import export_bundle, graph_specs


@pytest.fixture(scope="module", params=[("CartPole-v1", {}), ("Pendulum-v1", {"dynamics_sample": True}), pytest.param(
    ("CartPole-v1", {"dynamics": "transformer", "sequence_mode": True}), marks=pytest.mark.slow)],  # its export: tens of seconds
                ids=["CartPole-v1", "Pendulum-v1", "CartPole-v1-transformer-memory"])
def exported(request, export_cache):
    env_id, fields = request.param
    space = space_info(make_env(env_id))
    torch.manual_seed(0)  # the export is cached by the sources that shape it: the weights must be theirs alone
    agent = Agent(small_config(env_id=env_id, **fields), space)
    # A normaliser that has seen data, so the exported encoder carries real statistics.
    agent.world_model.normalizer.update(torch.randn(64, *space.obs_shape) * 3 + 1)
    name = "-".join(["export", env_id, *(f"{k}={v}" for k, v in fields.items())])
    out = export_cache(name, agent, training_step=123, last_eval=42.0, keep=3)
    return agent, latest_bundle(out)


def test_every_graph_matches_torch_on_1000_random_inputs(exported):
    """Parity within 1e-5 (max abs; and 1e-6 relative for outputs far above 1, such as an untrained
    reward head's symexp on random beliefs, where 1e-5 is a few float32 ulps) for each graph, at several batch sizes (the batch axis is dynamic);
    with a memory (and transformer dynamics), at every history (and past) length from 0 and 1 to the
    maximum (the mask's real prefix)."""
    agent, bundle = exported
    rng = np.random.default_rng(0)
    for name, (module, examples, spec) in graph_specs(agent).items():
        session = ort.InferenceSession(str(bundle / spec.file))
        for batch in (1, 7, 992):  # 1,000 inputs in all
            feeds = {n: rng.normal(0, 2, (batch, *e.shape[1:])).astype(np.float32) for n, e in zip(spec.inputs, examples)}
            for key in ("state", "past_state"):  # beliefs as the model makes them: a layer-normalised state, a GRU's memory in (-1, 1)
                if key in feeds:
                    belief, size = torch.from_numpy(feeds[key]), agent.cfg.state_dim
                    feeds[key] = torch.cat([torch.nn.functional.layer_norm(belief[..., :size], (size,)),
                                            torch.tanh(belief[..., size:])], -1).numpy()
            for key in ("action", "history_action", "past_action"):  # agent actions: class indices, or vectors in [-1, 1]
                if key in feeds:
                    example = examples[spec.inputs.index(key)]
                    feeds[key] = (rng.integers(0, agent.space.action_dim, feeds[key].shape[:example.dim()])
                                  if example.dtype == torch.int64 else np.tanh(feeds[key]))
            for key in ("history_mask", "past_mask"):  # row i holds i % (L + 1) real steps: lengths 0, 1, ..., L
                if key in feeds:
                    length = feeds[key].shape[1]
                    feeds[key] = np.arange(length)[None] < (np.arange(batch) % (length + 1))[:, None]
            got = session.run(spec.outputs, feeds)
            with torch.no_grad():
                want = module(*(torch.from_numpy(feeds[n]) for n in spec.inputs))
            want = want if isinstance(want, tuple) else (want,)
            for g, w in zip(got, want):
                assert g.shape[0] == batch
                np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=1e-6, err_msg=name)


def test_manifest_describes_and_verifies_the_bundle(exported):
    agent, bundle = exported
    manifest = load_manifest(bundle)
    assert manifest.training_step == 123 and manifest.last_eval_return == 42.0
    assert manifest.env_id == agent.cfg.env_id and manifest.state_size == agent.cfg.belief_dim
    assert set(manifest.graphs) == {"encoder", "policy", "value", "world_model", "decoder", "act"}
    assert set(manifest.sha256) == {g.file for g in manifest.graphs.values()}
    assert manifest.action_space.kind == ("discrete" if agent.space.discrete else "box")
    # what served imagination samples next states with: the training's own noise, or none
    assert manifest.dynamics_std == (agent.cfg.dynamics_std if agent.cfg.dynamics_sample else 0.0) and manifest.state_dim == agent.cfg.state_dim


def test_corrupted_or_truncated_graph_is_refused(exported, tmp_path):
    _, bundle = exported
    import shutil

    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    data = (copy / "policy.onnx").read_bytes()
    (copy / "policy.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="checksum mismatch for policy.onnx"):
        load_manifest(copy)
    shutil.copy(bundle / "policy.onnx", copy / "policy.onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION - 1}))
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION - 1}, expected {FORMAT_VERSION}"):
        load_manifest(copy)  # an older bundle (its world model takes one-hot actions) is refused by name, not by a failing call
    (copy / "manifest.json").write_text(json.dumps({**manifest, "graphs": {**manifest["graphs"], "act": {
        **manifest["graphs"]["act"], "outputs": manifest["graphs"]["act"]["outputs"][::-1]}}}))
    with pytest.raises(BundleError, match="graph act is declared as"):
        load_manifest(copy)  # outputs are read by name, and the names are the bundle format's
    del manifest["graphs"]["act"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks graphs act"):
        load_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_manifest(copy)


@pytest.mark.slow
def test_versions_increase_pointer_moves_and_old_ones_are_pruned(tmp_path, exported_agents):
    """Three versions published from an exported bundle's graphs, then a fourth by export_bundle itself."""
    from serving import publish_copy

    source = latest_bundle(exported_agents["CartPole-v1"][1])
    for step in (1, 2, 3):
        publish_copy(source, tmp_path, keep=2, training_step=step, phase="warmup", last_eval_return=None)
    export_bundle(exported_agents["CartPole-v1"][0], tmp_path, training_step=4, phase="warmup", last_eval=None, keep=2)
    assert versions(tmp_path) == [3, 4]
    assert (tmp_path / POINTER).read_text() == "v000004"
    assert latest_bundle(tmp_path) == tmp_path / "v000004"
    assert latest_bundle(tmp_path / "v000003") == tmp_path / "v000003"
    assert json.loads((tmp_path / "v000004" / "manifest.json").read_text())["training_step"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging or pointer temp left behind"


@pytest.mark.slow
def test_training_publishes_bundles_and_reverie_export_adds_one(tmp_path, monkeypatch):
    """`reverie train` exports at once, every export_every steps and at the end; `reverie export` adds one,
    from the checkpoint alone (its spaces are saved there: no env is made)."""
    import reverie.trainer.envs
    from reverie.cli import main

    args = ["train", "--run-dir", str(tmp_path), "--preset", "smoke", "--steps", "200", "--set", "threads=1"]
    assert main(args) == 0
    export_dir = tmp_path / "export"
    assert versions(export_dir) == [1, 2, 3]  # at step 0, then every 100 steps (smoke)
    assert [load_manifest(export_dir / f"v00000{v}").training_step for v in (1, 2, 3)] == [0, 100, 200]
    def no_env(*_):
        raise AssertionError("reverie export made an env")

    monkeypatch.setattr(reverie.trainer.envs, "make_env", no_env)
    assert main(["export", "--run-dir", str(tmp_path)]) == 0
    newest = load_manifest(latest_bundle(tmp_path))
    assert newest.action_space == load_manifest(export_dir / "v000003").action_space
    assert newest.model_version == 4 and newest.training_step == 200
    assert main(["export", "--run-dir", str(tmp_path / "missing")]) == 2
