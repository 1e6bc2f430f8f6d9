"""`reverie up`: the trainer as a background process plus the server, sharing one run directory.

The trainer publishes a bundle at once, so `/act` answers within seconds, and the server follows
each newer export. The trainer runs in its own session: a Ctrl-C in the terminal reaches only
this process, which stops the server and then sends the trainer one SIGTERM, on which it writes a
resumable checkpoint. Running `reverie up` again on the same directory resumes.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path

from reverie.runs import RunDir
from reverie.signals import on_stop_signals
from reverie.service.server import Service
from reverie.service.settings import ServiceSettings

log = logging.getLogger("reverie.up")
STOP_TIMEOUT_S = 120


def trainer_command(run_dir: Path, train_args: list[str]) -> list[str]:
    """`reverie train` on the run dir with the given flags, resuming when the dir holds a checkpoint."""
    command = [sys.executable, "-m", "reverie.cli", "train", "--run-dir", str(run_dir), *train_args]
    if RunDir(run_dir).latest_checkpoint() is not None:
        command.append("--resume")
    return command


def up(run_dir: Path, train_args: list[str], settings: ServiceSettings) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    service = Service(settings)
    on_stop_signals(service.stop)
    command = trainer_command(run_dir, train_args)
    log.info("trainer: %s", " ".join(command[1:]))
    trainer = subprocess.Popen(command, start_new_session=True)
    failed = threading.Event()

    def watch_trainer() -> None:
        code = trainer.wait()
        current = service.store.current
        if service.http.should_exit:
            return
        if code == 0:
            log.info("training finished; still serving model version %s", current and current.version)
        elif current is None:
            log.error("the trainer exited with code %d before publishing a bundle: stopping", code)
            failed.set()
            service.stop()
        else:
            log.error("the trainer exited with code %d; still serving model version %d", code, current.version)

    threading.Thread(target=watch_trainer, name="trainer-watch", daemon=True).start()
    try:
        service.run()
    finally:
        service.stop()
        if trainer.poll() is None:
            log.info("stopping the trainer (it saves a checkpoint)")
            trainer.send_signal(signal.SIGTERM)
            try:
                trainer.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("the trainer did not stop within %d s: killed", STOP_TIMEOUT_S)
                trainer.kill()
    return 1 if failed.is_set() else 0
