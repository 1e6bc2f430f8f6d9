"""A client's recent steps: what an agent with memory reads beside the current observation.

Torch-free and shared: the game-loop clients keep one to send as `history`, the service keeps one
per session and per gRPC stream, and `reverie eval` keeps one to play a bundle as the trainer does.
"""

from __future__ import annotations

from collections import deque


class Recent:
    """The last `length` steps of an episode, oldest first: each observation with the action taken
    after it (so both lists have the same length). `length` 0 keeps nothing (an agent without memory)."""

    def __init__(self, length: int):
        self.observations: deque = deque(maxlen=length)
        self.actions: deque = deque(maxlen=length)

    def record(self, obs, action) -> None:
        self.observations.append(obs)
        self.actions.append(action)

    def clear(self) -> None:
        self.observations.clear()
        self.actions.clear()
