"""The suite's fixtures: one thread and a fixed seed per test, and the agents and runs several tests share.

Helpers that tests import by name live in builders.py (learning) and serving.py (servers and clients).
"""

from __future__ import annotations

import signal

import pytest
import torch

from builders import pixel_run, small_config
from reverie.trainer.envs import make_env, space_info

# One intra-op thread from the start, before any fixture of wider scope builds a model.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def exported_agents(tmp_path_factory):
    """{env_id: (agent, export_dir)}: a small agent per action kind, its normaliser fed, exported once.

    Untrained weights are enough for the serving contract; the trained-bundle tests train their own.
    """
    from reverie.trainer.agent import Agent
    from reverie.trainer.export import export_bundle

    agents = {}
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        torch.manual_seed(0)
        space = space_info(make_env(env_id))
        agent = Agent(small_config(env_id=env_id), space)
        agent.world_model.normalizer.update(torch.randn(64, *space.obs_shape) * 2 + 0.5)
        with torch.no_grad():  # a policy far from uniform: actions, probabilities and env units then differ by state
            agent.policy.net[-1].weight.normal_(0.0, 0.5)
        export_dir = tmp_path_factory.mktemp(env_id) / "export"
        export_bundle(agent, export_dir, training_step=100, phase="full", last_eval=20.0, keep=100)
        agents[env_id] = (agent, export_dir)
    return agents


@pytest.fixture(scope="session")
def memory_agent(tmp_path_factory):
    """(agent, export dir): a small sequence-mode agent with two transformer dynamics members on
    CartPole without velocities (history_length 3, dynamics_context 3), its policy far from uniform
    so that what it remembers moves its answers."""
    from reverie import envs
    from reverie.trainer.agent import Agent
    from reverie.trainer.export import export_bundle

    torch.manual_seed(0)
    space = space_info(envs.make("CartPole-v1", [0, 2]))
    agent = Agent(small_config(sequence_mode=True, sequence_length=4, obs_indices=[0, 2], dynamics="transformer",
                               dynamics_ensemble=2), space)
    agent.world_model.normalizer.update(torch.randn(64, 2) * 0.1)
    with torch.no_grad():
        agent.policy.net[-1].weight.normal_(0.0, 0.5)
        for member in agent.world_model.dynamics.members:  # positions that matter, as trained ones would
            member.position.normal_(0.0, 0.5)
    export_dir = tmp_path_factory.mktemp("memory") / "export"
    export_bundle(agent, export_dir, training_step=100, phase="full", last_eval=20.0, keep=100)
    return agent, export_dir


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
def trained_cartpole(tmp_path_factory):
    """A run dir holding a CartPole agent trained by the real CLI until its eval reached 475.

    Seed 0 of the cartpole preset gets there in 1,500 env steps (about 1.5 minutes on 2 cores); the
    run stops at the first evaluation >= 475 and publishes that exact agent as its last bundle. Should
    another CPU's rounding lead seed 0 elsewhere, seed 2 is tried (475 at 2,500 steps), then seed 1
    (not by 2,500 since the replay stores each observation once and draws other batches).
    """
    import subprocess
    import sys

    from reverie.bundle import latest_bundle, load_manifest

    for seed in (0, 2, 1):
        run_dir = tmp_path_factory.mktemp("trained") / f"cartpole-{seed}"
        subprocess.run([sys.executable, "-m", "reverie.cli", "train", "--preset", "cartpole", "--seed", str(seed),
                        "--run-dir", str(run_dir), "--set", "target_return=475", "--set", "threads=1"],
                       check=True, timeout=600, capture_output=True)
        if load_manifest(latest_bundle(run_dir)).last_eval_return >= 475:
            return run_dir
    pytest.fail("no cartpole seed reached an eval return of 475 within 2,500 env steps")


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session (each test uses streams of its own names)."""
    from loopback import RedisServer

    with RedisServer() as server:
        yield server
