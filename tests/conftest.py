"""The suite's fixtures: one thread and a fixed seed per test, and the agents and runs several tests share.

Helpers that tests import by name live in builders.py (learning) and serving.py (servers and clients).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from filelock import FileLock  # (the test extra)

from builders import pixel_run, small_config
from reverie.trainer.envs import make_env, space_info

# One intra-op thread from the start, before any fixture of wider scope builds a model.
torch.set_num_threads(1)

# Session fixtures that train (minutes of CPU). Under pytest-xdist (`-n 2`, the suite's default) each
# is trained once, by the first worker to need it, under a file lock beside the workers' temporary
# folders; the other worker waits and takes the same run. The first test to use one carries the
# training in its setup: 3 minutes on a quiet 2-core machine, several times that with the CPU shared,
# so these tests' hang guard is wider than the suite's 300 s.
TRAINED = ("trained_cartpole",)
TRAINED_TIMEOUT_S = 3600


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in TRAINED):
            item.add_marker(pytest.mark.timeout(TRAINED_TIMEOUT_S))


@pytest.fixture(autouse=True)
def _single_thread_and_seeded():
    """One intra-op thread (the suite shares 2 cores) and a fixed torch seed for every test."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_stop_signals():
    """`reverie train` installs SIGTERM and SIGINT handlers; keep them from leaking into later tests."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


ROOT = Path(__file__).resolve().parents[1]
# What shapes an exported bundle: the trainer and the contract's code, the proto, and how these fixtures build their agents.
EXPORT_SOURCES = ("trainer", "reverie", "proto", "tests/conftest.py", "tests/builders.py")


def cached_export(request, tmp_path_factory, name: str, agent, training_step: int = 100, last_eval: float = 20.0,
                  keep: int = 100) -> Path:
    """`agent` exported to an export folder of its own. The export (ONNX: seconds per graph) is kept in
    pytest's cache between runs under a digest of every source file that shapes it and of the torch,
    onnx and onnxscript versions; the fixtures build their agents from fixed seeds, so one digest is one
    bundle. Each session gets a fresh copy, so what a test writes there never reaches the next run."""
    import onnx
    import onnxscript

    from reverie.trainer.export import export_bundle

    out = tmp_path_factory.mktemp(name) / "export"
    cache = getattr(request.config, "cache", None)
    if cache is None:  # -p no:cacheprovider
        export_bundle(agent, out, training_step=training_step, phase="full", last_eval=last_eval, keep=keep)
        return out
    digest = hashlib.sha256(f"{torch.__version__} {onnx.__version__} {onnxscript.__version__}".encode())
    files = [ROOT / s for s in EXPORT_SOURCES if (ROOT / s).is_file()]
    files += [f for s in EXPORT_SOURCES if (ROOT / s).is_dir() for f in (ROOT / s).rglob("*") if f.suffix in (".py", ".proto")]
    for path in sorted(files):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    kept = cache.mkdir(f"reverie-export-{name}-{digest.hexdigest()[:16]}")
    if not (kept / "export").is_dir():
        # Each process exports under a name of its own (pytest-xdist's workers may race to the same
        # digest); the first complete one renamed into place wins, an interrupted one is redone.
        partial = kept / f"partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        export_bundle(agent, partial, training_step=training_step, phase="full", last_eval=last_eval, keep=keep)
        try:
            partial.rename(kept / "export")
        except OSError:  # another worker's landed first
            shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(kept / "export", out)
    return out


@pytest.fixture(scope="session")
def export_cache(request, tmp_path_factory):
    """`cached_export` for a test module's own agents: (name, agent, **export arguments) -> export dir.
    The agent must be built from a fixed seed, as the cache keys on sources, not weights."""
    return lambda name, agent, **args: cached_export(request, tmp_path_factory, name, agent, **args)


@pytest.fixture(scope="session")
def exported_agents(request, tmp_path_factory):
    """{env_id: (agent, export_dir)}: a small agent per action kind, its normaliser fed, exported once.

    Untrained weights are enough for the serving contract; the trained-bundle tests train their own.
    """
    from reverie.trainer.agent import Agent

    agents = {}
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        torch.manual_seed(0)
        space = space_info(make_env(env_id))
        agent = Agent(small_config(env_id=env_id), space)
        agent.world_model.normalizer.update(torch.randn(64, *space.obs_shape) * 2 + 0.5)
        with torch.no_grad():  # a policy far from uniform: actions, probabilities and env units then differ by state
            agent.policy.net[-1].weight.normal_(0.0, 0.5)
        agents[env_id] = (agent, cached_export(request, tmp_path_factory, env_id, agent))
    return agents


@pytest.fixture(scope="session")
def memory_agent(request, tmp_path_factory):
    """(agent, export dir): a small sequence-mode agent with two transformer dynamics members on
    CartPole without velocities (history_length 3, dynamics_context 3), its policy far from uniform
    so that what it remembers moves its answers."""
    from reverie import envs
    from reverie.trainer.agent import Agent

    torch.manual_seed(0)
    space = space_info(envs.make("CartPole-v1", [0, 2]))
    agent = Agent(small_config(sequence_mode=True, sequence_length=4, obs_indices=[0, 2], dynamics="transformer",
                               dynamics_ensemble=2), space)
    agent.world_model.normalizer.update(torch.randn(64, 2) * 0.1)
    with torch.no_grad():
        agent.policy.net[-1].weight.normal_(0.0, 0.5)
        for member in agent.world_model.dynamics.members:  # positions that matter, as trained ones would
            member.position.normal_(0.0, 0.5)
    return agent, cached_export(request, tmp_path_factory, "memory", agent)


@pytest.fixture(scope="session")
def pixel_agent(tmp_path_factory):
    """(agent, export dir, run dir): 64x64 frames of CartPole, `pixel_run`, with its policy then moved far
    from uniform (so that answers differ by frame) and published."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("pixels")
    trainer = pixel_run(run_dir, 64)
    with torch.no_grad():
        trainer.agent.policy.net[-1].weight.normal_(0.0, 0.5)
    trainer.publish_bundle()
    return trainer.agent, run_dir / "export", run_dir


@pytest.fixture(scope="session")
def trained_cartpole(tmp_path_factory, worker_id):
    """A run dir holding a CartPole agent trained by the real CLI until its eval reached 475.

    Seed 0 of the cartpole preset gets there in 1,250 env steps (500 at its fifth evaluation, about 1.5
    minutes on 2 cores); the run stops at the first evaluation >= 475 and publishes that exact agent as
    its last bundle. Should another CPU's rounding lead seed 0 elsewhere, seeds 2 and 1 are tried.
    """
    import subprocess
    import sys

    from reverie.bundle import latest_bundle, load_manifest

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "trained_cartpole.lock")):  # one worker trains; the other takes its run
        for seed in (0, 2, 1):
            run_dir = shared / "trained" / f"cartpole-{seed}"
            if not (run_dir / "export").is_dir():
                shutil.rmtree(run_dir, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "reverie.cli", "train", "--preset", "cartpole", "--seed", str(seed),
                                "--run-dir", str(run_dir), "--set", "target_return=475", "--set", "threads=1"],
                               check=True, timeout=TRAINED_TIMEOUT_S / 3, capture_output=True)  # a hang guard per seed
            if load_manifest(latest_bundle(run_dir)).last_eval_return >= 475:
                return run_dir
    pytest.fail("no cartpole seed reached an eval return of 475 within 2,500 env steps")


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session (each test uses streams of its own names)."""
    from loopback import RedisServer

    with RedisServer() as server:
        yield server
