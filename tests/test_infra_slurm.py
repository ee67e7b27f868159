"""infra/slurm/mshep-ray.sbatch on a real Slurm cluster: Debian's slurmctld and two slurmd (nodes
n1 and n2, at 127.0.0.2 and 127.0.0.3: one machine, two node addresses) with munged, each on its
own socket, ports, state and spool under a temp dir; `sbatch` submits the script as a user would.

- run mode, 2 nodes: the job starts a Ray head on n1 and a Ray worker on n2 (srun), runs `mshep
  run` against the simulated model and a real Prefect server (`prefect server start`), and tears
  Ray down. The dataset and summary account for every row; the stage tasks ran in Ray workers
  (their logs, kept by MSHEP_RAY_LOGS, name every shard); nothing of Ray is left.
- worker mode, 1 node: a run of infra/slurm/prefect.yaml's deployment is scheduled first; the job's
  Prefect worker (--run-once) executes it with the stage tasks on the job's Ray cluster.

Needs slurm-wlm and munge (`apt-get install slurm-wlm munge`; .ci/run installs them) and root
(slurmd runs jobs as their user); skipped otherwise."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig
from tests.prefect_stack import prefect, prefect_server

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "infra" / "slurm" / "mshep-ray.sbatch"
VENV = Path(sys.executable).parent.parent
DAEMONS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "sinfo")
MISSING = [name for name in DAEMONS if not shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")]
NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3"}
QUESTIONS, SHARD, M, N = 12, 4, 2, 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"no {', '.join(MISSING)} (apt-get install slurm-wlm munge)"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd must run as root to start jobs"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def daemon(name: str) -> str:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin") or name


@dataclass
class Slurm:
    """A Slurm cluster of two nodes on this machine; `env` is what its clients need."""

    home: Path
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]]

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            list(args), env=env or self.env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        return done.stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.home / "log").glob("*.log"))
        )

    def job_state(self, job: str) -> str:
        shown = self.run("scontrol", "show", "job", "-o", job)
        found = re.search(r"JobState=(\S+)", shown)
        return found.group(1) if found else "UNKNOWN"

    def wait(self, job: str, output: Path, timeout: float = 300) -> str:
        """Wait until the job ends; returns its state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state
            time.sleep(2)
        subprocess.run(["scancel", job], env=self.env, timeout=60)
        text = output.read_text(errors="replace") if output.exists() else "(no output)"
        raise AssertionError(f"job {job} still running after {timeout} s:\n{text[-6000:]}")


def write_slurm_conf(home: Path) -> Path:
    cpus = os.cpu_count() or 1
    lines = [
        "ClusterName=mshep-test",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={home}/munge/munge.sock",
        f"StateSaveLocation={home}/state",
        f"SlurmdSpoolDir={home}/spool/%n",
        f"SlurmctldPidFile={home}/slurmctld.pid",
        f"SlurmdPidFile={home}/slurmd-%n.pid",
        f"SlurmctldLogFile={home}/log/slurmctld.log",
        f"SlurmdLogFile={home}/log/slurmd-%n.log",
        f"PlugStackConfig={home}/plugstack.conf",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/builtin",
        "MpiDefault=none",
        "ReturnToService=2",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MinJobAge=600",
        # Job ids (and so the script's default Ray temp dir /tmp/ray-<job id>) unlike another
        # test cluster's on this machine.
        f"FirstJobId={random.randint(100_000, 900_000)}",
    ]
    for name, address in NODES.items():  # one slurmd per node, on its own port
        lines.append(
            f"NodeName={name} NodeHostname=localhost NodeAddr={address} Port={free_port()} "
            f"CPUs={cpus} RealMemory=1000 State=UNKNOWN"
        )
    lines.append(f"PartitionName=test Nodes={','.join(NODES)} Default=YES MaxTime=60 State=UP")
    conf = home / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    (home / "plugstack.conf").write_text("")
    return conf


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    home = Path(tempfile.mkdtemp(prefix="msl-", dir="/tmp"))  # short: munge's socket is in it
    for sub in ("munge", "state", "spool", "log"):
        (home / sub).mkdir()
    key = home / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    conf = write_slurm_conf(home)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen[bytes]] = []
    log = (home / "log" / "daemons.out").open("ab")

    def start(*command: str) -> None:
        processes.append(
            subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT)
        )

    munge = home / "munge"
    start(
        daemon("munged"), "--foreground", "--force", f"--socket={munge}/munge.sock",
        f"--key-file={key}", f"--pid-file={munge}/munged.pid",
        f"--log-file={home}/log/munged.log", f"--seed-file={munge}/munged.seed",
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (munge / "munge.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    start(daemon("slurmctld"), "-D", "-i", "-c", "-f", str(conf))
    for name in NODES:
        start(daemon("slurmd"), "-D", "-N", name, "-f", str(conf))
    cluster = Slurm(home, env, processes)
    try:
        deadline = time.monotonic() + 90
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            shown = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True
            )
            states = dict(line.split() for line in shown.stdout.splitlines() if line.strip())
            if states and all(states.get(name) == "idle" for name in NODES):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"Slurm nodes not idle: {states}\n{cluster.logs()}")
        yield cluster
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


@pytest.fixture(scope="module")
def sim(gsm8k_test: Path) -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as model:
        yield model


def submit(
    slurm: Slurm, server: dict[str, str], workdir: Path, nodes: int, **settings: str
) -> tuple[str, Path]:
    """`sbatch --nodes=<nodes> infra/slurm/mshep-ray.sbatch` with the settings in its
    environment (sbatch exports it to the job); returns the job id and its output file."""
    env = {
        **server,  # PREFECT_API_URL and PREFECT_HOME of the test's server, MSHEP_HOME
        "SLURM_CONF": slurm.env["SLURM_CONF"],
        "MSHEP_VENV": str(VENV),
        "MSHEP_RAY_PORT": str(free_port()),
        "MSHEP_RAY_CLIENT_PORT": str(free_port()),
        "MSHEP_RAY_LOGS": str(workdir / "ray-logs"),
        **settings,
    }
    submitted = slurm.run(
        "sbatch", "--parsable", f"--nodes={nodes}", f"--chdir={workdir}",
        f"--output={workdir}/slurm-%j.out", str(SBATCH), env=env,
    )  # fmt: skip
    job = submitted.strip().split(";")[0]
    return job, workdir / f"slurm-{job}.out"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def ray_worker_logs(logs: Path) -> dict[str, str]:
    """The Ray worker processes' logs the job kept, per node directory."""
    return {
        node.name: "".join(p.read_text(errors="replace") for p in node.glob("worker-*"))
        for node in sorted(logs.iterdir())
        if node.is_dir()
    }


def assert_ray_is_gone(job: str) -> None:
    left = subprocess.run(["pgrep", "-af", f"/tmp/ray-{job}"], capture_output=True, text=True)
    assert left.stdout == "", f"Ray processes of job {job} left behind:\n{left.stdout}"
    assert not list(Path("/tmp").glob(f"ray-{job}*")), "a Ray temp dir of the job is left"


def test_sbatch_runs_the_flow_on_a_two_node_ray_cluster(
    slurm: Slurm, server: dict[str, str], sim: SimulatedMathModel, gsm8k_test: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    output = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "dataset": {"source": str(gsm8k_test), "limit": QUESTIONS},
                "generator": {"M": M, "model": "sim"},
                "completer": {"N": N, "model": "sim"},
                "serving": {"base_url": sim.base_url, "concurrency": 16, "timeout_s": 30},
                "output": {"path": str(output)},
                "execution": {"shard_size": SHARD},  # threads here: the job says ray
            }
        )
    )
    started = time.monotonic()
    job, job_output = submit(slurm, server, tmp_path, nodes=2, MSHEP_CONFIG=str(config))
    state = slurm.wait(job, job_output)
    print(f"job {job}: {state} after {time.monotonic() - started:.0f} s")
    text = job_output.read_text(errors="replace")
    assert state == "COMPLETED", text[-8000:] + slurm.logs()

    # The cluster the script started: two nodes, at the nodes' addresses; the flow used it.
    assert "Ray cluster up: 2 node(s), 0 GPU(s): 127.0.0.2 127.0.0.3" in text
    assert "execution.ray_address=127.0.0.2:" in text
    assert "Using Ray cluster with 2 nodes." in text

    # Every row accounted for; the dataset written.
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows_in"] == QUESTIONS
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS
    assert summary["rows_labelled"] == QUESTIONS
    assert summary["solutions_generated"] == QUESTIONS * M
    raw = read_jsonl(output / "raw" / "data.jsonl")
    assert len(raw) == summary["rows_out"]["raw"] == summary["solutions_labelled"]
    assert len({row["problem_id"] for row in raw}) == QUESTIONS
    for fmt in ("math_shepherd", "trl"):
        assert len(read_jsonl(output / fmt / "data.jsonl")) == summary["rows_out"][fmt]
        assert (output / fmt / "data.parquet").is_file()
    assert summary["labels"]["good"] > 0 and summary["labels"]["bad"] > 0

    # The stage tasks ran in Ray worker processes of the job's cluster (both nodes' logs kept).
    logs = ray_worker_logs(tmp_path / "ray-logs")
    assert set(logs) == set(NODES), logs.keys()
    every = "".join(logs.values())
    for shard in range(1, QUESTIONS // SHARD + 1):
        for stage in ("generate", "complete"):
            assert f"Task run '{stage} shard {shard}/3' - Finished in state Completed" in every
    assert_ray_is_gone(job)


def test_sbatch_worker_mode_runs_a_scheduled_deployment_run(
    slurm: Slurm, server: dict[str, str], sim: SimulatedMathModel, gsm8k_test: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    import httpx

    env = server
    created = prefect("work-pool", "create", "mshep-slurm", "--type", "process", env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect(
        "--no-prompt", "deploy", "--all", "--prefect-file", "infra/slurm/prefect.yaml", env=env
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

    output = tmp_path / "out"
    questions = 8
    scheduled = prefect(
        "deployment", "run", "mshep/gsm8k-slurm",
        "--param", json_param("dataset", {"source": str(gsm8k_test), "name": None,
                                          "limit": questions}),
        "--param", json_param("generator", {"model": "sim", "M": M}),
        "--param", json_param("completer", {"model": "sim", "N": N}),
        "--param", json_param("serving", {"base_url": sim.base_url, "endpoint_limit": 16,
                                          "concurrency": 16}),
        "--param", json_param("output", {"path": str(output)}),
        "--param", json_param("execution", {"shard_size": SHARD}),
        env=env,
    )  # fmt: skip
    assert scheduled.returncode == 0, scheduled.stdout + scheduled.stderr
    found = re.search(
        r"UUID\('([0-9a-f-]{36})'\)|\b([0-9a-f]{8}-[0-9a-f-]{27})\b", scheduled.stdout
    )
    assert found is not None, scheduled.stdout
    flow_run_id = next(g for g in found.groups() if g)

    started = time.monotonic()
    job, job_output = submit(slurm, server, tmp_path, nodes=1, MSHEP_MODE="worker")
    state = slurm.wait(job, job_output)
    print(f"job {job}: {state} after {time.monotonic() - started:.0f} s")
    text = job_output.read_text(errors="replace")
    assert state == "COMPLETED", text[-8000:] + slurm.logs()

    run = httpx.get(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", timeout=10).json()
    assert run["state_type"] == "COMPLETED", text[-8000:]
    assert "Using Ray cluster with 1 nodes." in text  # the flow run found the job's cluster

    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows_in"] == summary["rows_labelled"] == questions
    raw = read_jsonl(output / "raw" / "data.jsonl")
    assert len(raw) == questions * M
    assert {n for row in raw for n in row["rollouts"] if n} == {N}
    every = "".join(ray_worker_logs(tmp_path / "ray-logs").values())
    for shard in (1, 2):
        assert f"Task run 'generate shard {shard}/2' - Finished in state Completed" in every
    assert_ray_is_gone(job)


def json_param(name: str, value: dict[str, Any]) -> str:
    return f"{name}={json.dumps(value)}"
