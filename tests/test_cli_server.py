"""`mshep run` without a configured Prefect API starts its own temporary server before it
imports Prefect (`flows.process.TemporaryServer`), uses it, and leaves nothing behind: the
server stops when the run ends, and dies with the CLI when the CLI is killed (SIGKILL).

Real processes: the CLI as a subprocess with its own PREFECT_HOME and no PREFECT_API_URL,
Prefect's server under uvicorn, the simulated model over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flows.process import TemporaryServer
from mshep.config import RunConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

# Slow (a Prefect server starts each time), and Linux only (the processes are read in /proc).
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def real_processes(test: Callable[..., None]) -> Callable[..., None]:
    return pytest.mark.slow(LINUX(test))


def test_no_temporary_server_where_a_run_has_or_needs_another() -> None:
    threads = RunConfig()
    ray = RunConfig.model_validate({"execution": {"task_runner": "ray"}})
    assert TemporaryServer.start(ray) is None  # Ray workers must reach the API: never loopback
    import prefect  # noqa: F401  (a Python caller has Prefect, and its API, set up)

    assert TemporaryServer.start(threads) is None


@pytest.fixture
def sim(gsm8k_test: Path) -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(base_latency_s=0.2), gsm8k_test) as model:
        yield model


def cli(sim: SimulatedMathModel, data: Path, tmp_path: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    command = [
        sys.executable, "-m", "mshep.cli", "run", "--dataset", str(data), "--limit", "8",
        "--base-url", sim.base_url, "--model", "sim", "-M", "2", "-N", "2",
        "--output", str(tmp_path / "out"),
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def server_of(cli_pid: int, wait_s: float = 60) -> int:
    """The pid of the CLI's Prefect server (uvicorn serving Prefect's app), once it runs."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for task in Path(f"/proc/{cli_pid}/task").glob("*"):
            for child in (task / "children").read_text().split():
                line = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                if b"uvicorn" in line and b"prefect.server.api.server:create_app" in line:
                    return int(child)
        time.sleep(0.05)
    raise AssertionError("the CLI started no Prefect server")


def gone(pid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited, not yet reaped by its (dead) parent's reaper
            return True
        time.sleep(0.1)
    return False


@real_processes
def test_the_run_starts_its_own_server_first_and_stops_it(
    sim: SimulatedMathModel, gsm8k_test: Path, tmp_path: Path
) -> None:
    process = cli(sim, gsm8k_test, tmp_path)
    server = server_of(process.pid)  # there before the flow needs it
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["rows_labelled"] == 8
    assert "Starting temporary server" not in err  # Prefect did not start one of its own
    assert gone(server, 10)


@real_processes
def test_a_killed_run_leaves_no_server_behind(
    sim: SimulatedMathModel, gsm8k_test: Path, tmp_path: Path
) -> None:
    process = cli(sim, gsm8k_test, tmp_path)
    server = server_of(process.pid)
    time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert gone(server, 15), "the server outlived the CLI that was killed"
