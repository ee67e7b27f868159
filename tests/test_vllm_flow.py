"""serving.kind 'vllm' end to end on a real local Ray: the flow starts its engines as named Ray
actors once, the stage tasks send them whole batches, the engines are freed (or kept) at the end,
and a dead engine fails its shard without caching it. The engine is mshep's real engine code
(`mshep.backends.vllm_engine`) over the test stand-in for vllm's offline API (tests/fake_vllm:
the simulated maths model), in an interpreter given to Ray as `py_executable` like the real
engine environment. The real vllm engine is tests/test_vllm_real.py.

Ray starts once for the module with tests/fake_vllm on its workers' PYTHONPATH; the flow finds it
running (as with `execution.ray_address`) and leaves it up."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mshep.config import RunConfig
from mshep.errors import BackendUnavailable, ConfigError
from mshep.failures import RunIncomplete
from tests.helpers import environment

pytestmark = pytest.mark.slow

FAKE = Path(__file__).parent / "fake_vllm"
DATA = Path(__file__).resolve().parents[1] / "mshep" / "data" / "gsm8k-test-200.jsonl"
QUESTIONS, SHARD = 16, 4
SHARDS = QUESTIONS // SHARD


@pytest.fixture(scope="module")
def ray_cluster(prefect_harness: None, tmp_path_factory: Any) -> Iterator[Path]:
    """A local Ray whose workers can import the stand-in vllm; yields the engines' load log."""
    ray = pytest.importorskip("ray")
    loads = tmp_path_factory.mktemp("engines") / "loads.txt"
    path = os.pathsep.join(filter(None, [str(FAKE), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with environment({"PYTHONPATH": path, "VLLM_FAKE_LOADS": str(loads)}):
        ray.init(include_dashboard=False, num_cpus=8, log_to_driver=False)
        try:
            yield loads
        finally:
            ray.shutdown()


def config_for(output: Path, **serving: Any) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"source": str(DATA), "limit": QUESTIONS},
            "golden": {"source": "model", "model": "strong-tiny"},
            "generator": {"M": 2, "model": "weak-tiny"},
            "completer": {"N": 3, "model": "weak-tiny"},
            "serving": {
                "kind": "vllm",
                "engine_python": sys.executable,  # the flow's own: the stand-in is on its path
                "engine_gpus": 0,
                "completer_replicas": 2,
                **serving,
            },
            "output": {"path": str(output), "formats": ["raw", "trl"], "file_types": ["jsonl"]},
            "execution": {"shard_size": SHARD, "workers": 4},
        }
    )


def raw_rows(output: Path) -> list[dict[str, Any]]:
    path = output / "raw" / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loaded(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def engine_names() -> set[str]:
    import ray

    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "mshep"
    }


def test_each_engine_loads_once_serves_every_shard_and_is_freed(
    ray_cluster: Path, tmp_path: Path
) -> None:
    from flows.prm import run_flow

    before = len(loaded(ray_cluster))
    summary = run_flow(config_for(tmp_path / "a"))
    loads = loaded(ray_cluster)[before:]
    # golden: one engine; generator and completer share the weak model's first engine and
    # the completer has a second replica: three engines, each loaded once for 3 x 4 shard tasks.
    assert sorted(line.split()[0] for line in loads) == ["strong-tiny", "weak-tiny", "weak-tiny"]
    engines = {engine["name"]: engine for engine in summary["engines"]}
    assert len(engines) == 3 and all(e["loads"] == 1 for e in engines.values()), engines
    assert sum(e["batches"] for e in engines.values()) >= 3 * SHARDS
    assert summary["rows_in"] == QUESTIONS
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS
    assert summary["rows_labelled"] >= QUESTIONS - 1
    assert summary["solutions_generated"] == 2 * QUESTIONS
    assert summary["stages"]["complete"]["requests"] > 0
    assert not engine_names()  # freed when the flow ended

    # Seeds make it reproducible: a fresh run (cache off) writes the same rows.
    again = config_for(tmp_path / "b")
    again.execution.cache = False
    run_flow(again)
    assert raw_rows(tmp_path / "b") == raw_rows(tmp_path / "a")


def test_stage_tasks_on_ray_workers_use_the_flows_engines(
    ray_cluster: Path, tmp_path: Path
) -> None:
    """With the Ray task runner the stage tasks run in Ray workers, not in the flow's process:
    they find the engines the flow started by name, and nothing loads twice."""
    from flows.prm import run_flow

    config = config_for(tmp_path / "a")
    config.execution.task_runner = "ray"
    before = len(loaded(ray_cluster))
    summary = run_flow(config)
    assert len(loaded(ray_cluster)) - before == 3
    assert all(e["loads"] == 1 for e in summary["engines"])
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS
    assert summary["solutions_generated"] == 2 * QUESTIONS
    assert not engine_names()


def test_kept_engines_serve_the_next_run_without_loading(ray_cluster: Path, tmp_path: Path) -> None:
    from flows.prm import run_flow
    from mshep.backends.vllm import stop_engines

    config = config_for(tmp_path / "a", keep_engines=True)
    config.execution.cache = False
    try:
        run_flow(config)
        kept = engine_names()
        assert len(kept) == 3
        before = len(loaded(ray_cluster))
        config.output.path = str(tmp_path / "b")
        summary = run_flow(config)
        assert len(loaded(ray_cluster)) == before  # nothing loaded again
        assert engine_names() == kept
        assert all(e["batches"] >= 2 * SHARDS for e in summary["engines"] if "weak" in e["name"])
    finally:
        from flows.engines import engine_specs

        stop_engines(engine_specs(config))
    assert not engine_names()


def test_an_engine_that_dies_fails_its_shard_and_the_same_command_resumes(
    ray_cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.prm import run_flow

    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:QUESTIONS]]
    victim = rows[SHARD * 2]["question"][:60]  # a question of shard 3
    monkeypatch.setenv("VLLM_FAKE_DIE", victim)
    monkeypatch.setenv("VLLM_FAKE_DIE_MARK", str(tmp_path / "died"))
    output = tmp_path / "out"
    config = config_for(output)
    with pytest.raises(RunIncomplete) as failed:
        run_flow(config)
    message = str(failed.value)
    assert "vLLM engine died" in message and "shard 3/4" in message, message
    assert "run the same command to resume" in message
    assert not (output / "raw").exists()  # no dataset from a run with holes
    assert (tmp_path / "died").exists()
    assert not engine_names()

    summary = run_flow(config)  # the engine would not die again: the marker is there
    reused = (
        summary["stages"]["generate"]["reused_shards"]
        + summary["stages"]["golden"]["reused_shards"]
    )
    assert reused >= 2 * SHARDS - 2  # only the dead engine's shard(s) were redone
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS


@pytest.mark.parametrize(
    ("serving", "golden_model", "error", "words"),
    [
        ({"engine_python": "/nonexistent/bin/python"}, "strong-tiny", ConfigError,
         ["serving.engine_python", "/nonexistent/bin/python", "make-venv.sh"]),
        ({}, "/models/missing-model", ConfigError, ["golden.model", "/models/missing-model"]),
        ({}, "huge-model", BackendUnavailable,
         ["huge-model", "failed to load", "KV cache", "serving.gpu_memory_utilization"]),
    ],
)  # fmt: skip
def test_engine_problems_are_one_line_naming_the_setting(
    ray_cluster: Path,
    tmp_path: Path,
    serving: dict[str, Any],
    golden_model: str,
    error: type[Exception],
    words: list[str],
) -> None:
    from flows.prm import run_flow

    config = config_for(tmp_path / "out", **serving)
    config.golden.model = golden_model
    with pytest.raises(error) as raised:
        run_flow(config)
    message = str(raised.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert not engine_names()  # nothing left holding GPUs


def test_stage_tasks_cannot_hold_gpus_the_engines_need() -> None:
    with pytest.raises(ValueError, match=r"execution\.completer_gpus is 1 but serving\.kind"):
        RunConfig.model_validate({"serving": {"kind": "vllm"}, "execution": {"completer_gpus": 1}})
