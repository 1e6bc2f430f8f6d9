"""Action encoding, the one place trainer and service share: env <-> agent (the world-model graph takes the agent form)."""

from __future__ import annotations

import numpy as np

from reverie.actions import ActionCoding


def test_box_actions_map_onto_the_bounds_and_back():
    coding = ActionCoding(False, [-2.0, 0.0], [2.0, 10.0])
    agent = np.array([[-1.0, -1.0], [0.0, 0.5], [1.0, 1.0]], np.float32)
    env = coding.to_env(agent)
    np.testing.assert_allclose(env, [[-2.0, 0.0], [0.0, 7.5], [2.0, 10.0]])
    np.testing.assert_allclose(coding.from_env(env), agent, atol=1e-6)
    np.testing.assert_allclose(coding.to_env(np.array([[3.0, -7.0]])), [[2.0, 0.0]])  # outside [-1, 1]: the bound


def test_discrete_actions_are_indices_both_ways():
    coding = ActionCoding(True)
    assert coding.to_env(np.array([2, 0])).tolist() == [2, 0] and coding.from_env([1]).tolist() == [1]
