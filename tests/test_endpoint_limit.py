"""One bound on the requests in flight to one endpoint, across runs: three concurrent runs
(each with 4 task threads and 8 requests in flight per task) against one simulated model never
have more than `serving.endpoint_limit` requests in flight there, as the server itself counts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flows.endpoints import limit_name
from mshep.config import RunConfig, ServingConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

LIMIT = 6


def config_for(sim: SimulatedMathModel, data: Path, output: Path, limit: int | None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"source": str(data), "limit": 16},
            "generator": {"M": 2, "model": "sim"},
            "completer": {"N": 2, "model": "sim"},
            "serving": {"base_url": sim.base_url, "concurrency": 8, "endpoint_limit": limit},
            "output": {"path": str(output), "formats": ["raw"], "file_types": ["jsonl"]},
            "execution": {"shard_size": 4, "workers": 4},
        }
    )


def three_runs(sim: SimulatedMathModel, data: Path, tmp: Path, limit: int | None) -> list[Any]:
    from flows.prm import run_flow

    configs = [config_for(sim, data, tmp / f"run-{i}-{limit}", limit) for i in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(run_flow, configs))


def test_three_concurrent_runs_stay_under_the_endpoint_limit(
    prefect_harness: None, gsm8k_test: Path, tmp_path: Path
) -> None:
    with SimulatedMathModel(SimulatorConfig(base_latency_s=0.05), gsm8k_test) as sim:
        summaries = three_runs(sim, gsm8k_test, tmp_path, None)
        unbounded = sim.stats().max_in_flight
        sim.reset_stats()
        summaries += three_runs(sim, gsm8k_test, tmp_path, LIMIT)
        bounded = sim.stats().max_in_flight
    print(f"max requests in flight: {unbounded} without a limit, {bounded} with limit {LIMIT}")
    assert all(summary["rows_labelled"] == 16 for summary in summaries)
    assert unbounded > LIMIT  # the bound matters here
    assert bounded <= LIMIT


def test_the_limit_is_named_after_the_endpoint_without_credentials() -> None:
    served = ServingConfig(base_url="http://me:secret@gpu-7.internal:8000/v1")
    assert limit_name(served) == "mshep-endpoint-gpu-7-internal-8000-v1"
    assert limit_name(ServingConfig()) == "mshep-endpoint-hf"
