"""How the long-running commands (train, serve, up) take SIGTERM and Ctrl-C."""

from __future__ import annotations

import signal
from typing import Callable


def on_stop_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and Ctrl-C call `stop()`, which asks the work to wind down at its next safe point.

    Not a KeyboardInterrupt: raised at whatever line is running, it can land in a finalizer,
    where Python prints and drops it, and the process keeps going with no stop on its way.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())
