"""Schemathesis against the live OpenAPI document: everything it allows is accepted, the rest refused, no 5xx.

The document is refined from the served manifest (shapes, bounds, horizon limits), so this also
checks that the document tells clients the truth about the bundle being served.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving import ThreadServer

pytestmark = pytest.mark.slow  # thousands of generated requests per server: tens of seconds

ST = shutil.which("st") or str(Path(sys.executable).with_name("st"))


@pytest.mark.parametrize("bundle, token, phases", [("CartPole-v1", None, "examples,coverage,fuzzing,stateful"),
                                                   ("Pendulum-v1", None, "examples,fuzzing,stateful"),
                                                   ("memory", "s3cret", "examples,fuzzing,stateful")])
def test_schemathesis_finds_no_failure(bundle, token, phases, exported_agents, memory_agent, tmp_path):
    """CartPole and Pendulum agents, and an agent with memory (its histories and sessions) behind a token;
    each takes experience into a log. The coverage phase (every boundary of every field, ~2,000 cases)
    runs on the first; the others fuzz their own spaces and memory, within the suite's time."""
    export_dir = memory_agent[1] if bundle == "memory" else exported_agents[bundle][1]
    with ThreadServer(export_dir, api_token=token, experience=tmp_path / "experience") as server:
        command = [ST, "run", f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "10", "--seed", "1",
                   "--request-timeout", "10", "--max-failures", "5", "--phases", phases]
        if token:
            command += ["-H", f"Authorization: Bearer {token}"]
        # Run in tmp_path: schemathesis keeps a crash cache in .schemathesis/ of its working directory,
        # which would carry one run's findings into the next.
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout
    assert server.store.current.version == 1 and server.store.refusals == 0
