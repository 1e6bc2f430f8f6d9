"""Imagination fidelity: how far the world model's open-loop imagination strays from what happened.

Measured on held-out real sequences (the evaluation's episodes, which no update has seen): from a
real step, the model imagines H steps with the actions that were really taken, and each imagined
step is compared with the real one (the state, the decoded observation in env units, the reward,
whether the episode went on). In sequence mode the memory first reads `CONTEXT` real steps, and
transformer dynamics attend over them as the rollout's first steps.
"""

from __future__ import annotations

import numpy as np
import torch

from reverie.evaluation import Episode

from .components import Rollout
from .envs import SpaceInfo
from .replay import Replay
from .world_model import WorldModel

CONTEXT = 4  # real steps the memory reads before the imagined rollout starts
KEYS = ("state_error", "obs_error", "reward_error", "continue_accuracy")


def episodes_replay(episodes: list[Episode], space: SpaceInfo) -> Replay:
    """The episodes as a replay (agent actions, as stored in training), to draw sequences from."""
    slots = sum(len(e.observations) for e in episodes)  # each step's observation and each episode's last
    replay = Replay(max(slots, 2), space.obs_shape, () if space.discrete else (space.action_dim,),
                    np.uint8 if space.is_image else np.float32)
    for e in episodes:
        actions = space.coding.from_env(e.actions)
        for t, reward in enumerate(e.rewards):
            last = t == len(e.rewards) - 1
            replay.add(e.observations[t], actions[t], float(reward), e.observations[t + 1],
                       last and e.terminated, last and not e.terminated)
    return replay


@torch.no_grad()
def open_loop_errors(wm: WorldModel, batch: dict[str, torch.Tensor], horizon: int) -> dict[str, list[float]]:
    """Per imagined step k = 1..horizon of a sequence batch ([B, CONTEXT + horizon]): mean absolute
    error of the state and of the decoded observation, mean absolute reward error, and the share of
    steps whose continue prediction (p > 0.5) was right. Only real steps count; the lists stop at the
    first step no sequence reaches."""
    _, next_states, beliefs, _ = wm.observe(batch)
    # Transformer dynamics read the real context as the rollout's first steps: the sequence goes on.
    rollout = Rollout()
    for i in range(CONTEXT if wm.dynamics_context else 0):
        wm.transition(beliefs[:, i], wm.encode_action(batch["action"][:, i]), rollout)
    belief, out = beliefs[:, CONTEXT], {key: [] for key in KEYS}
    for k in range(horizon):
        i = CONTEXT + k
        valid = batch["mask"][:, i]
        if not valid.any():
            break
        action = wm.encode_action(batch["action"][:, i])
        next_belief = wm.transition(belief, action, rollout)
        reward, continues = wm.outcome(belief, action, next_belief)
        errors = {
            "state_error": (next_belief[:, : wm.state_dim] - next_states[:, i]).abs().mean(-1),
            "obs_error": (wm.decode(next_belief) - batch["next_obs"][:, i]).abs().flatten(1).mean(-1),
            "reward_error": (reward - batch["reward"][:, i]).abs(),
            "continue_accuracy": ((continues > 0.5).float() == 1.0 - batch["terminated"][:, i]).float(),
        }
        for key, value in errors.items():
            out[key].append(float(value[valid].mean()))
        belief = next_belief
    return out


def imagination_fidelity(wm: WorldModel, space: SpaceInfo, episodes: list[Episode], horizon: int,
                         rng: np.random.Generator, device: torch.device | str = "cpu",
                         sequences: int = 64) -> dict[str, list[float]] | None:
    """`open_loop_errors` on `sequences` runs drawn from the episodes; None when they are too short
    to start a rollout after the context."""
    replay = episodes_replay(episodes, space)
    batch = replay.sample_sequences(sequences, CONTEXT + horizon, rng, device)
    starts = batch["mask"][:, CONTEXT]
    if not starts.any():
        return None
    batch = {k: v[starts] for k, v in batch.items()}
    errors = open_loop_errors(wm, batch, horizon)
    return errors if errors["obs_error"] else None
