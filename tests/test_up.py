"""`reverie up` when its trainer cannot run: the whole command fails, loudly, in seconds (fast tier)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loopback import free_ports


@pytest.mark.timeout(60)
def test_reverie_up_exits_non_zero_when_its_trainer_dies_before_the_first_bundle(tmp_path):
    """A trainer that cannot start (an env that does not exist) must not leave a server answering 503 for ever."""
    port, grpc_port = free_ports(2)
    done = subprocess.run([sys.executable, "-m", "reverie.cli", "up", "--run-dir", str(tmp_path / "run"), "--port", str(port),
                           "--grpc-port", str(grpc_port), "--env", "NoSuchEnv-v9"], capture_output=True, text=True, timeout=50)
    assert done.returncode == 1, done.stderr
    assert "cannot make env 'NoSuchEnv-v9'" in done.stderr
    assert "exited with code 2 before publishing a bundle" in done.stderr
