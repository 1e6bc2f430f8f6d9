"""The trainer's evaluation row says where each terminal ending happened, so that endings of different
kinds (CartPole's pole falling, its cart leaving the track) can be told apart in every run's metrics."""

from __future__ import annotations

import pytest

from builders import small_config
from reverie.trainer.agent import Agent
from reverie.trainer.envs import make_env, space_info
from reverie.trainer.evaluate import evaluate


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_the_row_holds_the_last_observation_of_each_terminal_ending(env_id):
    """An untrained CartPole agent ends every episode in a terminal state: each recorded observation is
    past one of the env's own termination limits. Pendulum's episodes are cut by its time limit, not
    ended: none is recorded."""
    env = make_env(env_id)
    agent = Agent(small_config(env_id=env_id, eval_episodes=4), space_info(env))
    row = evaluate(agent, env, 0).row
    ends = row["eval_terminal_obs"]
    assert len(ends) == row["eval_terminated"]
    if env_id == "Pendulum-v1":
        assert ends == []
        return
    limits = env.unwrapped
    assert len(ends) == 4
    for x, _, theta, _ in ends:
        assert abs(x) > limits.x_threshold or abs(theta) > limits.theta_threshold_radians
