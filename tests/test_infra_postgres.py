"""The Prefect server on PostgreSQL, as infra/prefect/ sets it up for production: Debian's
postgresql (initdb and pg_ctl as the `postgres` user, in a temp dir, on a free port, password
authentication over TCP), `prefect server start` with PREFECT_API_DATABASE_CONNECTION_URL
pointing at it, the work pools and deployments of deployments/prefect.yaml, one process worker,
and two deployment runs started at once.

Both runs complete and write their own dataset; their times overlap (concurrent writers); the
flow runs are rows of the Postgres database; no log says "database is locked" (SQLite's failure
under concurrent writers). Needs postgresql (`apt-get install postgresql`; .ci/run installs it);
skipped without its binaries, or as root without a `postgres` user to run them."""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.prefect_stack import BIN, REPO, deploy_all, prefect_server, worker


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl: Debian keeps them in /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("pg_ctl")
    if found and (Path(found).resolve().parent / "initdb").exists():
        return Path(found).resolve().parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.sub(r"\D", "", Path(p).parts[-3]) or 0),
    )
    return Path(versions[-1]).parent if versions else None


def postgres_user() -> str | None:
    """Who runs the database: ourselves, or (as root, which initdb refuses) `postgres`."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return None


PG_BIN = postgres_bin()
PG_USER = postgres_user()
RUNS = ({"N": 2, "limit": 6}, {"N": 3, "limit": 8})

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PG_BIN is None, reason="no PostgreSQL binaries (apt-get install postgresql)"
    ),
    pytest.mark.skipif(
        PG_USER is None, reason="as root, PostgreSQL needs a `postgres` user to run as"
    ),
]


@dataclass
class Postgres:
    url: str  # postgresql+asyncpg://…, what Prefect's setting takes
    port: int
    password: str
    log: Path

    def query(self, sql: str) -> str:
        assert PG_BIN is not None
        done = subprocess.run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "prefect",
             "-d", "prefect", "-At", "-c", sql],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def as_pg_user(*command: str) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", str(PG_USER), "--", *command]
    return list(command)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    assert PG_BIN is not None and PG_USER is not None
    home = Path(tempfile.mkdtemp(prefix="mpg-", dir="/tmp"))
    user = pwd.getpwnam(PG_USER)
    os.chown(home, user.pw_uid, user.pw_gid)
    password = secrets.token_hex(12)
    pwfile = home / "pw"
    pwfile.write_text(password + "\n")
    os.chown(pwfile, user.pw_uid, user.pw_gid)
    data, log = home / "data", home / "postgres.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def run(*command: str) -> None:
        done = subprocess.run(
            as_pg_user(*command), cwd=home, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, f"{command[0]}: {done.stdout}{done.stderr}"

    # The database superuser `prefect`, password authentication over TCP (as in production).
    run(
        str(PG_BIN / "initdb"), "-D", str(data), "-U", "prefect", f"--pwfile={pwfile}",
        "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w", "start")
    try:
        run(str(PG_BIN / "createdb"), "-h", str(home), "-p", str(port), "-U", "prefect", "prefect")
        url = f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{port}/prefect"
        yield Postgres(url=url, port=port, password=password, log=log)
    finally:
        subprocess.run(
            as_pg_user(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
            cwd=home, capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)


def test_two_concurrent_deployment_runs_on_a_postgres_backed_server(
    postgres: Postgres, tmp_path: Path
) -> None:
    import httpx

    home = tmp_path / "prefect-home"
    home.mkdir()
    with prefect_server(home, database_url=postgres.url) as env:
        deploy_all(env)
        api = env["PREFECT_API_URL"]
        started = time.monotonic()
        runs = []
        for k, run in enumerate(RUNS):
            output = tmp_path / f"out-{k}"
            command = [
                str(BIN / "prefect"), "deployment", "run", "mshep-demo/demo",
                "--param", f"completer={json.dumps({'N': run['N']})}",
                "--param", f"dataset={json.dumps({'limit': run['limit']})}",
                "--param", f"output={json.dumps({'path': str(output)})}",
                "--watch", "--watch-timeout", "400",
            ]  # fmt: skip
            log = (tmp_path / f"run-{k}.log").open("w")
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
            runs.append((process, tmp_path / f"run-{k}.log", output))
        try:
            # Both runs scheduled before the worker starts: its first poll takes both at once.
            scheduled = {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}
            deadline = time.monotonic() + 120
            while httpx.post(f"{api}/flow_runs/count", json=scheduled, timeout=10).json() < 2:
                assert time.monotonic() < deadline, "the two runs were not scheduled"
                time.sleep(0.5)
            with worker(env, tmp_path) as worker_log:
                for process, _, _ in runs:
                    process.wait(timeout=500)
        finally:
            for process, _, _ in runs:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        print(f"two concurrent runs: {time.monotonic() - started:.0f} s")
        flow_runs = []
        for (process, log_path, output), run in zip(runs, RUNS, strict=True):
            text = log_path.read_text()
            assert process.returncode == 0, text[-3000:] + worker_log.read_text()[-3000:]
            assert "Completed" in text
            found = re.search(
                r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b", text
            )
            assert found is not None, text
            flow_runs.append(httpx.get(f"{api}/flow_runs/{found.group(1)}", timeout=10).json())

            # Each run wrote its own dataset, with its own overrides.
            summary = json.loads((output / "summary.json").read_text())
            assert summary["rows_in"] == summary["rows_labelled"] == run["limit"]
            raw = [json.loads(line) for line in (output / "raw" / "data.jsonl").open()]
            assert len(raw) == run["limit"] * 4  # generator.M of the demo deployment
            assert {n for row in raw for n in row["rollouts"] if n} == {run["N"]}
        server_log = (home / "server.log").read_text(errors="replace")
        worker_text = worker_log.read_text(errors="replace")

    assert all(run["state_type"] == "COMPLETED" for run in flow_runs)
    # The two runs ran at the same time: each started before the other ended.
    spans = [(when(run["start_time"]), when(run["end_time"])) for run in flow_runs]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    for text in (server_log, worker_text, postgres.log.read_text(errors="replace")):
        assert "database is locked" not in text
    # The server's state is in Postgres: both runs and their subflow runs, Completed.
    ids = ",".join(f"'{run['id']}'" for run in flow_runs)
    assert postgres.query(f"select count(*) from flow_run where id in ({ids})") == "2"
    completed = postgres.query("select count(*) from flow_run where state_type = 'COMPLETED'")
    assert int(completed) >= 4  # the demo runs mshep_flow as a subflow


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
