"""The flow on a real local Ray (prefect-ray's RayTaskRunner): every shard task (generate,
complete) runs in a Ray worker process, against the simulated model (real HTTP), the Prefect API
of the test harness and a moto S3 server on 127.0.0.1 holding shard data, task results and the
output. A second run of the same config reuses every shard through the results on s3://,
whichever worker runs it.

Ray starts once for the module, after the harness and the S3 server, so its workers inherit the
AWS_* environment as the nodes of a cluster have their own; the RayTaskRunner finds it running
and uses it. The workers reach the harness's API because prefect-ray sends each task the
driver's settings (PREFECT_API_URL included): the task runs are recorded there, which this test
checks, rather than in a temporary server per worker."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mshep.config import RunConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

QUESTIONS, SHARD, SHARDS = 12, 4, 3
OUTPUT = f"s3://mshep/ray-{uuid.uuid4().hex[:8]}"


def config_for(sim: SimulatedMathModel, data: Path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"source": str(data), "limit": QUESTIONS},
            "generator": {"M": 2, "model": "sim"},
            "completer": {"N": 2, "model": "sim"},
            "serving": {"base_url": sim.base_url, "concurrency": 16, "timeout_s": 10},
            "output": {"path": OUTPUT, "formats": ["raw"], "file_types": ["jsonl"]},
            "execution": {
                "shard_size": SHARD,
                "task_runner": "ray",
                "result_storage": f"{OUTPUT}/results",
            },
        }
    )


def run(config: RunConfig, sim: SimulatedMathModel, tag: str) -> tuple[dict[str, Any], dict]:
    """Run the flow with its task runs tagged; return its summary and the simulator's requests."""
    from prefect import tags

    from flows.prm import run_flow

    sim.reset_stats()
    started = time.monotonic()
    with tags(tag):
        summary = run_flow(config)
    print(f"{tag}: {time.monotonic() - started:.1f} s")
    return summary, dict(sim.stats().by_kind)


def raw_rows() -> list[str]:
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    with fs.open(f"{OUTPUT}/raw/data.jsonl", "r") as handle:
        return [line for line in handle.read().splitlines() if line.strip()]


def task_run_states(tag: str) -> dict[str, list[str]]:
    """The stage task runs the harness's API recorded for one run: name -> state names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[tag])), limit=200
        )
    states: dict[str, list[str]] = {}
    for task_run in runs:
        name = task_run.name.split(" ")[0]
        if name in ("generate", "complete"):  # load and write run in the flow's process
            states.setdefault(name, []).append(str(task_run.state_name))
    return {name: sorted(names) for name, names in states.items()}


@pytest.fixture(scope="module")
def sim(gsm8k_test: Path) -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as model:
        yield model


@pytest.fixture(scope="module")
def local_ray(prefect_harness: None, s3_server: dict[str, str]) -> Iterator[None]:
    """One local Ray for the module, started after the harness and the S3 server so that its
    workers inherit the AWS_* environment; shut down at the end."""
    import ray

    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # no token file
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="prefect",
        object_store_memory=256 * 1024**2,
    )
    try:
        yield
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def test_ray_labels_every_row_and_a_second_run_reuses_every_shard(
    local_ray: None, sim: SimulatedMathModel, gsm8k_test: Path
) -> None:
    first_tag, again_tag = f"first-{OUTPUT[-8:]}", f"again-{OUTPUT[-8:]}"
    first, asked = run(config_for(sim, gsm8k_test), sim, first_tag)
    assert first["rows_labelled"] == QUESTIONS
    assert asked["generate"] == QUESTIONS and asked["complete"] > 0
    # Recorded in the harness's API by the Ray workers (not in a temporary server of their own).
    assert task_run_states(first_tag) == {
        "generate": ["Completed"] * SHARDS,
        "complete": ["Completed"] * SHARDS,
    }
    rows = raw_rows()
    assert len(rows) == QUESTIONS * 2  # one raw row per candidate

    again, asked = run(config_for(sim, gsm8k_test), sim, again_tag)
    assert asked == {"generate": 0, "complete": 0, "unknown": 0}
    assert raw_rows() == rows
    assert again["rows_labelled"] == QUESTIONS
    assert again["labels"] == first["labels"]
    for stage in ("generate", "complete"):
        assert again["stages"][stage]["reused_shards"] == SHARDS
    assert task_run_states(again_tag) == {
        "generate": ["Cached"] * SHARDS,
        "complete": ["Cached"] * SHARDS,
    }


def test_ray_without_a_prefect_api_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.prm import build_task_runner
    from mshep.errors import ConfigError

    config = RunConfig.model_validate({"execution": {"task_runner": "ray"}})
    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(ConfigError) as error:
        build_task_runner(config)
    assert "PREFECT_API_URL" in str(error.value)
