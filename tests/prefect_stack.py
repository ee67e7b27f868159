"""A real Prefect stack for the deployment tests: `prefect server start` on 127.0.0.1 with its
own home (SQLite, or the database a URL names), the work pools of deployments/prefect.yaml,
`prefect --no-prompt deploy --all`, and a process worker. Shared by tests/test_prefect_yaml.py,
tests/test_ui.py, tests/test_infra_postgres.py and tests/test_infra_slurm.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOLS = ("mshep-cpu", "mshep-ray", "mshep-gpu")


def prefect(
    *args: str, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "prefect"), *args]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def prefect_server(
    home: Path, ui: bool = False, database_url: str | None = None
) -> Iterator[dict[str, str]]:
    """Yields the environment of a client, a worker and `prefect deploy` against the server
    (with `ui`, the UI's API URL points at it too; with `database_url`, e.g.
    postgresql+asyncpg://user:password@host:port/db, the server keeps its state there instead of
    SQLite in `home`; only the server's process gets it)."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "MSHEP_HOME": str(REPO),
    }
    if ui:
        env["PREFECT_UI_API_URL"] = api  # what the browser calls (GET /ui-settings)
    server_env = dict(env)
    if database_url:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    env["PREFECT_API_URL"] = api
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError((home / "server.log").read_text()[-3000:])
        yield env
    finally:
        server.terminate()
        server.wait(timeout=60)


def deploy_all(env: dict[str, str]) -> str:
    """The three work pools, then `prefect --no-prompt deploy --all`; returns its output."""
    for pool in POOLS:
        created = prefect("work-pool", "create", pool, "--type", "process", env=env)
        assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect(
        "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", env=env
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    return deployed.stdout


@contextmanager
def worker(env: dict[str, str], workdir: Path) -> Iterator[Path]:
    """A process worker on mshep-cpu running in `workdir`; yields its log file."""
    log = workdir / "worker.log"
    process = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "mshep-cpu"],
        cwd=workdir, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield log
    finally:
        process.terminate()
        process.wait(timeout=60)
