"""Lambda-returns of imagined rollouts in numpy, for the service: the formula the trainer computes in
torch (`trainer.losses.lambda_return`), so a served /imagine ranks plans as training valued them."""

from __future__ import annotations

import numpy as np


def lambda_return(rewards: np.ndarray, continues: np.ndarray, values: np.ndarray, gamma: float, lambda_: float) -> np.ndarray:
    """R_t = r_t + gamma * c_t * ((1 - lambda) * V_{t+1} + lambda * R_{t+1}), R_H = V_H (as the trainer's)."""
    returns = np.empty_like(rewards)
    next_return = values[:, -1]
    for t in reversed(range(rewards.shape[1])):
        next_return = rewards[:, t] + gamma * continues[:, t] * ((1 - lambda_) * values[:, t + 1] + lambda_ * next_return)
        returns[:, t] = next_return
    return returns
