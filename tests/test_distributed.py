"""Data-parallel learning on the CPU: two real processes joined by torch.distributed's gloo backend.

The ranks average their gradients inside each optimizer step, so after K updates on different
batches every rank holds the same parameters; the world model's updates equal those of one
process given both ranks' batches at once; a stopped two-process run resumes exactly, every rank with its own generators."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from builders import collect_replay, small_config
from reverie.cli import main
from reverie.runs import RunDir
from reverie.trainer import distributed
from reverie.trainer.agent import Agent
from reverie.trainer.checkpoint import load_checkpoint, rng_state
from reverie.trainer.config import UpdateCounts
from reverie.trainer.loop import Trainer

UPDATES = 4
BATCH = 32
FULL = UpdateCounts(world_model=1, actor=1, critic=1)
WORLD_MODEL = UpdateCounts(world_model=1, actor=0, critic=0)


def batches(count: int) -> tuple[list[dict], object]:
    """`count` different batches of real CartPole steps (one per rank), and the env's spaces."""
    replay, space = collect_replay("CartPole-v1", 400)
    return [replay.sample(BATCH, np.random.default_rng(100 + i)) for i in range(count)], space


def fresh(space) -> Agent:
    """An untrained agent, seeded: the same weights in every process."""
    torch.manual_seed(0)
    return Agent(small_config(), space)


def agent_after(space, rank_batches: list[dict], counts: UpdateCounts, ranks=None) -> Agent:
    """A fresh agent after UPDATES updates on its rank's batch."""
    agent = fresh(space)
    agent.ranks = ranks
    torch.manual_seed(1 + (ranks.rank if ranks else 0))  # each rank its own imagination draws
    batch = rank_batches[ranks.rank if ranks else 0]
    for _ in range(UPDATES):
        agent.update(batch, counts, critic_real_mix=0.5)
    return agent


def states(agent: Agent) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, and every optimizer's moments, by name."""
    out = dict(agent.state_dict())
    for name in ("world_model_optimizer", "actor_optimizer", "critic_optimizer"):
        for index, state in getattr(agent, name).state_dict()["state"].items():
            out.update({f"{name}/{index}/{k}": torch.as_tensor(v) for k, v in state.items()})
    return out


def _rank_updates(ranks, rank_batches, space, out_dir) -> None:
    torch.set_num_threads(1)
    for name, counts in (("full", FULL), ("world_model", WORLD_MODEL)):
        torch.save(states(agent_after(space, rank_batches, counts, ranks)), out_dir / f"{name}{ranks.rank}.pt")


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    """Both ranks' states after UPDATES full updates and, from fresh, UPDATES world-model updates, each
    rank on its own batch (the second's rewards ones the first never sees); one launch of two processes."""
    rank_batches, space = batches(2)
    rank_batches[1]["reward"] = 2.0 * rank_batches[1]["reward"]
    out = tmp_path_factory.mktemp("ranks")
    distributed.spawn(2, _rank_updates, rank_batches, space, out).join()
    load = lambda name: [torch.load(out / f"{name}{r}.pt") for r in range(2)]  # noqa: E731
    return rank_batches, space, load("full"), load("world_model")


def test_every_rank_holds_the_same_parameters_after_updates_on_different_batches(ranked):
    rank_batches, space, (first, second), _ = ranked
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # ...which each rank alone would not: its own batch moves it elsewhere.
    alone = states(agent_after(space, rank_batches, FULL))
    assert not torch.equal(alone["policy.net.0.weight"], first["policy.net.0.weight"])
    assert not torch.equal(alone["world_model.dynamics.members.0.0.weight"],
                           first["world_model.dynamics.members.0.0.weight"])


def test_the_world_model_learns_as_one_process_given_both_batches(ranked):
    rank_batches, space, _, (ranked_states, _) = ranked
    joined = {k: torch.cat([b[k] for b in rank_batches]) for k in rank_batches[0]}
    one = states(agent_after(space, [joined], WORLD_MODEL))
    untrained = states(fresh(space))
    assert not torch.equal(one["world_model.dynamics.members.0.0.weight"],
                           untrained["world_model.dynamics.members.0.0.weight"])  # the comparison is of trained weights
    for key in one:
        assert torch.allclose(one[key], ranked_states[key], atol=1e-6, rtol=1e-5), key
    assert torch.equal(ranked_states["reward_range"], one["reward_range"])  # the extremes of both batches


def _train_rank(ranks, cfg, run_dir, resume, probe=None) -> None:
    trainer = Trainer(cfg, run_dir, resume=resume, ranks=ranks)
    if probe is not None:  # each rank's generator as the run starts
        torch.save(rng_state(trainer.rng), probe / f"rank{ranks.rank}.pt")
    trainer.run()


def tiny(total_steps: int):
    return small_config(total_steps=total_steps, warmup_steps=60, transition_steps=60, learning_starts=32,
                        replay_ratio=0.5, checkpoint_every=80, eval_every=80, eval_episodes=1, log_every=40)


@pytest.mark.slow
def test_a_stopped_two_process_run_resumes_exactly(tmp_path):
    """Stopped at 80 steps, every rank resumes with the generators it had at the stop (rank 0's and
    rank 1's differ, both in the one checkpoint), so two resumes of the same stop end alike."""
    stopped, probe = tmp_path / "stopped", tmp_path / "probe"
    probe.mkdir()
    distributed.spawn(2, _train_rank, tiny(80), stopped, False).join()
    saved = load_checkpoint(RunDir(stopped).latest_checkpoint())
    assert saved["position"]["env_step"] == 80
    logged = [row["env_step"] for row in RunDir(stopped).metrics()]
    assert logged == [40, 80]  # one rank writes the run's files: each row once
    assert len(saved["rank_rngs"]) == 1 and saved["rank_rngs"][0]["generator"] != saved["rng"]["generator"]
    twin = tmp_path / "twin"
    shutil.copytree(stopped, twin)
    distributed.spawn(2, _train_rank, tiny(160), stopped, True, probe).join()
    started = [torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [s["generator"] for s in started] == [saved["rng"]["generator"], saved["rank_rngs"][0]["generator"]]
    distributed.spawn(2, _train_rank, tiny(160), twin, True).join()
    ours, theirs = (load_checkpoint(RunDir(d).latest_checkpoint()) for d in (stopped, twin))
    assert ours["position"]["env_step"] == theirs["position"]["env_step"] == 160
    assert ours["position"]["updates"] > saved["position"]["updates"]
    for key, value in theirs["agent"].items():
        assert torch.equal(value, ours["agent"][key]), key
    assert ours["replay"]["data"]["obs"].tobytes() == theirs["replay"]["data"]["obs"].tobytes()
    assert ours["rank_rngs"][0]["generator"] == theirs["rank_rngs"][0]["generator"] != saved["rank_rngs"][0]["generator"]


def test_data_parallel_training_refuses_client_experience(tmp_path, capsys):
    code = main(["train", "--nproc", "2", "--source", "clients", "--preset", "smoke", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "--nproc" in capsys.readouterr().err and not (tmp_path / "run").exists()
