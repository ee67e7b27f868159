"""The model server dies mid-run: the run fails naming the cause (never a dataset with holes and
exit 0), finished shards are kept, and after the server is back the same run asks it only for
the shards that had not finished, and writes the dataset an uninterrupted run writes.

Real Prefect (test harness), real HTTP to the simulated model on a fixed port; the server is
stopped (its port closed, requests in flight cut) from a watcher thread at a point it chooses
from the server's own request log, and a new one started on the same port."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mshep.config import RunConfig
from mshep.failures import RunIncomplete
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

QUESTIONS, SHARD = 16, 4
SHARDS = QUESTIONS // SHARD


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_for(port: int, data: Path, output: Path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"source": str(data), "limit": QUESTIONS},
            "generator": {"M": 2, "model": "sim"},
            "completer": {"N": 2, "model": "sim"},
            "serving": {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "timeout_s": 5,
                "max_retries": 2,
                "circuit_breaker": 2,
            },
            "output": {"path": str(output), "formats": ["raw"], "file_types": ["jsonl"]},
            # One thread: shards run in order (generate 1, complete 1, generate 2, ...).
            "execution": {"shard_size": SHARD, "workers": 1},
        }
    )


def simulator(port: int, data: Path) -> SimulatedMathModel:
    return SimulatedMathModel(SimulatorConfig(port=port, base_latency_s=0.05), data)


def done_shards(output: Path, stage: str) -> set[int]:
    return {int(p.name.split("-")[1]) for p in (output / ".work").glob(f"{stage}-*/*.ref.json")}


def kill_when(sim: SimulatedMathModel, condition: Callable[[], bool]) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not condition():
            time.sleep(0.01)
        sim.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def questions_of(output: Path) -> dict[int, list[str]]:
    by_shard = {}
    for path in (output / ".work").glob("load-*/shard-*.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        by_shard[int(path.name.split("-")[1])] = [row["question"] for row in rows]
    return by_shard


def asked_shards(sim: SimulatedMathModel, output: Path, kind: str) -> set[int]:
    asked = sim.stats().by_question
    return {
        shard
        for shard, questions in questions_of(output).items()
        if any(f"{kind}: {q}" in asked for q in questions)
    }


def raw_rows(output: Path) -> list[dict[str, Any]]:
    path = output / "raw" / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def uninterrupted(prefect_harness: None, gsm8k_test: Path, tmp_path_factory: Any) -> list[Any]:
    from flows.prm import run_flow

    output = tmp_path_factory.mktemp("clean")
    port = free_port()
    with simulator(port, gsm8k_test):
        run_flow(config_for(port, gsm8k_test, output))
    return raw_rows(output)


@pytest.mark.parametrize("dies_during", ["generate", "complete"])
def test_a_dead_server_fails_the_run_and_the_same_command_resumes(
    dies_during: str, uninterrupted: list[Any], gsm8k_test: Path, tmp_path: Path
) -> None:
    from flows.prm import run_flow

    port, output = free_port(), tmp_path / "out"
    config = config_for(port, gsm8k_test, output)
    first = simulator(port, gsm8k_test)
    first.start()
    if dies_during == "generate":  # after 2 generate shards, within the 3rd
        watcher = kill_when(first, lambda: first.stats().by_kind["generate"] >= 2 * SHARD + 1)
    else:  # within the 2nd completion shard: the 1st is done and another request went out
        marks: list[int] = []

        def second_completion_started() -> bool:
            if not marks and done_shards(output, "complete"):
                marks.append(first.stats().by_kind["complete"])
            return bool(marks) and first.stats().by_kind["complete"] > marks[0]

        watcher = kill_when(first, second_completion_started)
    started = time.monotonic()
    with pytest.raises(RunIncomplete) as failed:
        run_flow(config)
    took = time.monotonic() - started
    watcher.join(timeout=10)
    message = str(failed.value)
    print(f"{took:.1f} s: {message}")
    assert f"connection error to http://127.0.0.1:{port}/v1" in message, message
    assert "requests" in message and "run the same command to resume" in message
    assert not (output / "raw").exists()  # no dataset from a run with holes
    assert took < 60, f"the run took {took:.0f} s to give up on a dead server"
    generated, completed = done_shards(output, "generate"), done_shards(output, "complete")
    assert 0 < len(completed) < SHARDS and len(generated) < SHARDS

    with simulator(port, gsm8k_test) as again:
        summary = run_flow(config)
        assert asked_shards(again, output, "generate") == set(range(SHARDS)) - generated
        assert asked_shards(again, output, "complete") == set(range(SHARDS)) - completed
    assert summary["rows_labelled"] == QUESTIONS  # every row labelled, not only accounted for
    assert raw_rows(output) == uninterrupted
