"""A run killed with SIGKILL during completion resumes where it stopped and gives the dataset an
uninterrupted run gives. The flow runs as `mshep run` in a subprocess, against the simulated
model (real HTTP) and a moto S3 server on 127.0.0.1: shard data, task results and the output all
live on s3://, the Prefect API is the test harness's server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

QUESTIONS, SHARD, SHARDS = 48, 8, 6


def write_config(tmp_path: Path, sim: SimulatedMathModel, data: Path, output: str) -> Path:
    config = {
        "dataset": {"source": str(data), "limit": QUESTIONS},
        "generator": {"M": 2, "model": "sim"},
        "completer": {"N": 2, "model": "sim"},
        "serving": {"base_url": sim.base_url, "concurrency": 16, "timeout_s": 10},
        "output": {"path": output, "formats": ["raw", "trl"], "file_types": ["jsonl"]},
        "execution": {"shard_size": SHARD, "workers": 2},
    }
    path = tmp_path / f"config-{abs(hash(output))}.json"
    path.write_text(json.dumps(config))
    return path


def environment(s3_env: dict[str, str]) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, **s3_env, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    return env


def start(config: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mshep.cli", "run", "--config", str(config)]
    with log.open("ab") as sink:
        return subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(process: subprocess.Popen[bytes], log: Path) -> None:
    rc = process.wait(timeout=300)
    assert rc == 0, log.read_text()[-4000:]


def shards_done(fs: Any, prefix: str, stage: str) -> set[int]:
    """Shards a stage finished: their data and then their reference (`.ref.json`, written last)
    are on storage (mshep.shards decides this, not Prefect's result records). A shard whose
    data is written but whose reference is not was in flight at the kill: the next run redoes it."""
    from mshep.shards import ShardRef

    fs.invalidate_cache()
    done = set()
    for name in fs.glob(f"{prefix.removeprefix('s3://')}/.work/{stage}-*/shard-*.jsonl.ref.json"):
        try:
            ref = ShardRef.model_validate_json(fs.cat(name).decode().strip())
        except Exception:  # cannot be half written (atomic move), but be safe
            continue
        assert fs.exists(ref.path)
        done.add(ref.shard)
    return done


def questions_by_shard(fs: Any, prefix: str) -> dict[int, list[str]]:
    by_shard = {}
    for name in fs.glob(f"{prefix}/.work/load-*/shard-*.jsonl"):
        with fs.open(name, "r") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        by_shard[int(Path(name).name.split("-")[1])] = [row["question"] for row in lines]
    return by_shard


def read_lines(fs: Any, path: str) -> list[dict[str, Any]]:
    with fs.open(path, "r") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def slow_sim(gsm8k_test: Path):
    # Slow enough that completion takes seconds, so the kill lands inside it.
    with SimulatedMathModel(SimulatorConfig(base_latency_s=0.25), gsm8k_test) as sim:
        yield sim


def test_sigkill_during_completion_resumes_without_asking_finished_shards_again(
    prefect_harness: None, s3_server: dict[str, str], slow_sim, gsm8k_test: Path, tmp_path: Path
):
    import fsspec

    fs = fsspec.filesystem("s3")
    env, log = environment(s3_server), tmp_path / "runs.log"
    crashed, clean = "s3://mshep/crash", "s3://mshep/clean"

    run = start(write_config(tmp_path, slow_sim, gsm8k_test, crashed), env, log)
    deadline = time.monotonic() + 240
    while not shards_done(fs, crashed, "complete"):
        assert run.poll() is None, "the run ended before any completion shard was written"
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    generated, completed = (
        shards_done(fs, crashed, "generate"),
        shards_done(fs, crashed, "complete"),
    )
    assert 0 < len(completed) < SHARDS, "the kill must land inside the completion stage"
    assert not fs.exists(f"{crashed}/raw/data.jsonl")

    slow_sim.reset_stats()
    finish(start(write_config(tmp_path, slow_sim, gsm8k_test, crashed), env, log), log)
    asked = slow_sim.stats().by_question
    by_shard = questions_by_shard(fs, crashed)
    asked_again = {
        stage: {s for s, qs in by_shard.items() if any(f"{stage}: {q}" in asked for q in qs)}
        for stage in ("generate", "complete")
    }
    # No finished shard is asked again; only the shards that were not finished at the kill.
    assert not asked_again["generate"] & generated
    assert not asked_again["complete"] & completed
    assert asked_again["complete"] == set(range(SHARDS)) - completed
    assert slow_sim.stats().by_kind["generate"] == SHARD * (SHARDS - len(generated))

    finish(start(write_config(tmp_path, slow_sim, gsm8k_test, clean), env, log), log)
    for name in ("raw", "trl"):
        resumed = read_lines(fs, f"{crashed}/{name}/data.jsonl")
        uninterrupted = read_lines(fs, f"{clean}/{name}/data.jsonl")
        assert len(resumed) == QUESTIONS * 2
        assert resumed == uninterrupted, f"{name}: the resumed dataset differs"
    summary = json.loads(fs.cat(f"{crashed}/summary.json"))
    assert summary["rows_labelled"] == QUESTIONS
    assert fs.glob(f"{crashed}/.work/results/*"), "task results persist on s3://"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_at_once_says_what_finished_and_the_same_command_resumes(
    prefect_harness: None,
    s3_server: dict[str, str],
    slow_sim,
    gsm8k_test: Path,
    tmp_path: Path,
    signum: int,
    code: int,
):
    """Ctrl-C (or SIGTERM from a scheduler) during completion: the process ends within 10 s with
    130 (143), its last line says what finished and that the same command resumes; it does."""
    import fsspec

    fs = fsspec.filesystem("s3")
    env, log = environment(s3_server), tmp_path / "runs.log"
    output = f"s3://mshep/interrupted-{signum}"
    config = write_config(tmp_path, slow_sim, gsm8k_test, output)
    run = start(config, env, log)
    deadline = time.monotonic() + 240
    while not shards_done(fs, output, "complete"):
        assert run.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.05)
    os.kill(run.pid, signum)
    sent = time.monotonic()
    rc = run.wait(timeout=30)
    took = time.monotonic() - sent
    assert rc == code and took < 10, (rc, took, log.read_text()[-3000:])
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({signal.Signals(signum).name}): finished shards")
    assert "complete " in last and "run the same command to resume" in last
    completed = shards_done(fs, output, "complete")

    slow_sim.reset_stats()
    finish(start(config, env, log), log)
    asked = slow_sim.stats().by_question
    by_shard = questions_by_shard(fs, output)
    asked_again = {s for s, qs in by_shard.items() if any(f"complete: {q}" in asked for q in qs)}
    assert not asked_again & completed
    text = log.read_text()
    assert "Failed to send telemetry" not in text and "Traceback" not in text
    assert "\x1b[K" not in text  # no terminal progress line in a log file
