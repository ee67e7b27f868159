"""The flow as a deployment runs it: `flow.serve()` in its own process against the harness's API
(real Prefect server), a run created with `run_deployment` and only a partial override of one
section, the run executed by the served runner from the entrypoint with parameters alone, its
tasks on a real local Ray cluster that the deployment's `execution` section names.

What it shows: the flow owns its execution (the Ray runner is chosen from the parameters, the
checks run first); a run's parameters override the deployment's field by field (`completer.N`
changes, every other setting of the deployment stays); `prefect deploy` accepts the entrypoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
QUESTIONS, SHARD = 8, 4


def api_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env["RAY_AUTH_MODE"] = "disabled"
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    return env


@pytest.fixture(scope="module")
def ray_cluster(prefect_harness: None) -> Iterator[tuple[str, Path]]:
    """A one-node Ray cluster started with `ray start`, as on a real head node; its temp dir is
    short (sockets have a 107-character path limit) and holds the workers' logs."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    port = 6390 + os.getpid() % 200
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    start = [ray, "start", "--head", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2"]
    start += ["--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=api_env(), check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}", temp
    finally:
        subprocess.run([ray, "stop", "--force"], env=api_env(), capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def sim(gsm8k_test: Path) -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as model:
        yield model


SERVE = """
import json, sys
from flows.prm import mshep_flow
mshep_flow.serve(name=sys.argv[1], parameters=json.loads(sys.argv[2]), limit=1)
"""


@pytest.fixture
def served(prefect_harness: None, tmp_path: Path) -> Iterator[Any]:
    """Serve a deployment of the flow in a process of its own; yields a starter."""
    processes: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "serve.log"

    def start(name: str, parameters: dict[str, Any]) -> str:
        with log.open("ab") as sink:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", SERVE, name, json.dumps(parameters)],
                    cwd=REPO,
                    env=api_env(),
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for_deployment(f"mshep/{name}", log)
        return f"mshep/{name}"

    yield start, log
    for process in processes:
        process.terminate()
        process.wait(timeout=60)


def wait_for_deployment(name: str, log: Path) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + 120
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                time.sleep(0.5)
    raise AssertionError(f"{name} was not served:\n{log.read_text()[-3000:]}")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_served_deployment_runs_on_ray_and_a_run_overrides_one_field(
    served: Any, ray_cluster: tuple[str, Path], sim: SimulatedMathModel, gsm8k_test: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    from prefect.deployments import run_deployment

    start, log = served
    address, ray_temp = ray_cluster
    output = tmp_path / "out"
    deployed = {
        "dataset": {"source": str(gsm8k_test), "limit": QUESTIONS},
        "generator": {"M": 2, "model": "sim-weak"},
        "completer": {"N": 2, "model": "sim-weak", "strategy": "per_step"},
        "serving": {"base_url": sim.base_url, "concurrency": 16, "timeout_s": 20},
        "output": {"path": str(output), "formats": ["raw"], "file_types": ["jsonl"]},
        "execution": {"task_runner": "ray", "ray_address": address, "shard_size": SHARD},
    }
    name = start(f"dep-{uuid.uuid4().hex[:6]}", deployed)

    # `prefect deployment run --param completer='{"N": 3}'` sends exactly this.
    run: Any = run_deployment(
        name, parameters={"completer": {"N": 3}}, timeout=300, poll_interval=1
    )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run.id)
    assert run.state is not None and run.state.is_completed(), log.read_text()[-4000:]

    assert run.name == "test.jsonl · sim-weak · M=2 N=3"  # named from the merged parameters
    rows = read_jsonl(output / "raw" / "data.jsonl")
    assert len(rows) == QUESTIONS * 2  # dataset.limit and generator.M kept
    assert {row["completer_model"] for row in rows} == {"sim-weak"}  # completer.model kept
    assert {row["strategy"] for row in rows} == {"per_step"}  # completer.strategy kept
    counts = {n for row in rows for n in row["rollouts"] if n}
    assert counts == {3}  # completer.N overridden
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows_in"] == QUESTIONS and summary["checks"]  # the checks ran first
    # The stage tasks ran in the Ray cluster's worker processes, which log what they ran.
    worker_logs = "".join(
        p.read_text(errors="replace") for p in ray_temp.glob("session_*/logs/worker-*")
    )
    for shard in (1, 2):
        assert f"generate shard {shard}/2" in worker_logs
        assert f"complete shard {shard}/2" in worker_logs


def test_prefect_deploy_accepts_the_entrypoint(prefect_harness: None, tmp_path: Path) -> None:
    """`prefect deploy` of the flow onto a process work pool; its parameter schema is the
    config's sections, each a form."""
    from prefect.client.orchestration import get_client

    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    pool, name = f"pool-{uuid.uuid4().hex[:6]}", f"deploy-{uuid.uuid4().hex[:6]}"
    env = api_env()
    created = subprocess.run(
        [prefect, "work-pool", "create", pool, "--type", "process"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run(
        [prefect, "--no-prompt", "deploy", "flows/prm.py:mshep_flow", "--name", name,
         "--pool", pool, "--param", 'completer={"N": 8}'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"mshep/{name}")
    schema = deployment.parameter_openapi_schema or {}
    assert list(schema["properties"]) == [
        "dataset", "golden", "generator", "completer", "serving", "output", "execution",
    ]  # fmt: skip
    assert deployment.parameters == {"completer": {"N": 8}}
