"""deployments/prefect.yaml for real: `prefect server start` on 127.0.0.1, the work pools
created, `prefect --no-prompt deploy --all`, a process worker, and `prefect deployment run
mshep-demo/demo --param … --watch` overriding nested fields. The run completes; the overridden
fields are honoured and the deployment's other settings kept; the run's artifacts (progress at
100 %, the label table, the report) are read back through the API."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.prefect_stack import deploy_all, prefect, prefect_server, worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as env:
        yield env


def read_artifacts(env: dict[str, str], flow_run_id: str) -> dict[str, Any]:
    """The artifacts of a flow run and of its subflow runs (the demo runs `mshep_flow` as one)."""
    import httpx

    api = env["PREFECT_API_URL"]
    children = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    ).json()
    ids = [flow_run_id, *(child["id"] for child in children)]
    body = {"artifacts": {"flow_run_id": {"any_": ids}}}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=10).json()
    return {(a.get("key") or a["type"]): a for a in found}


def test_deploy_all_then_a_worker_runs_the_demo_with_nested_overrides(
    server: dict[str, str], tmp_path: Path
) -> None:
    env = server
    deployed = deploy_all(env)
    for name in ("mshep-demo/demo", "mshep/gsm8k", "mshep/gsm8k-ray", "mshep/gsm8k-vllm"):
        assert f"Deployment '{name}' successfully created" in " ".join(deployed.split())

    output = tmp_path / "out"
    with worker(env, tmp_path) as worker_log:
        run = prefect(
            "deployment", "run", "mshep-demo/demo",
            "--param", 'completer={"N": 2}',
            "--param", 'dataset={"limit": 8}',
            "--param", f'output={{"path": "{output}"}}',
            "--watch", env=env, timeout=400,
        )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + worker_log.read_text()[-3000:]
    assert "Completed" in run.stdout

    rows = [json.loads(line) for line in (output / "raw" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 4  # dataset.limit overridden; generator.M from the deployment
    assert {row["completer_model"] for row in rows} == {"simulated-completer"}  # kept
    assert {n for row in rows for n in row["rollouts"] if n} == {2}  # completer.N overridden

    flow_run_id = re.search(r"UUID\('([0-9a-f-]{36})'\)|([0-9a-f-]{36})", run.stdout)
    assert flow_run_id is not None
    artifacts = read_artifacts(env, next(g for g in flow_run_id.groups() if g))
    progress = [a for a in artifacts.values() if a["type"] == "progress"]
    assert progress and float(progress[0]["data"]) == 100.0
    tables = {k: a for k, a in artifacts.items() if a["type"] == "table"}
    labels = next(a for k, a in tables.items() if k.endswith("-labels"))
    assert any(row["item"] == "good" and row["count"] > 0 for row in json.loads(labels["data"]))
    report = next(a for k, a in artifacts.items() if k.endswith("-report"))
    assert "retries" in report["data"] and "README.md" in report["data"]
