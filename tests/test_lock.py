"""One run at a time writes an output: a second is refused naming the first; a lock left by a
run that died is taken over, so a killed run never blocks the command that resumes it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from flows.lock import output_lock
from mshep.errors import OutputError
from mshep.shards import Layout


def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "out"))
    with output_lock(layout):
        refusal = pytest.raises(OutputError, match="being written by another run")
        with refusal as refused, output_lock(layout):
            pass
        assert f"pid {__import__('os').getpid()}" in str(refused.value)
    assert not (tmp_path / "out" / ".work" / "lock").exists()  # released at the end
    with output_lock(layout):  # and free again
        pass


def test_the_lock_of_a_run_that_died_is_taken_over(tmp_path: Path) -> None:
    layout = Layout(str(tmp_path / "out"))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    lock = tmp_path / "out" / ".work" / "lock"
    lock.parent.mkdir(parents=True)
    owner = {"flow_run": None, "host": socket.gethostname(), "pid": int(dead.stdout), "since": "x"}
    lock.write_text(json.dumps(owner))
    with output_lock(layout):
        assert json.loads(lock.read_text())["pid"] != owner["pid"]
    assert not lock.exists()
