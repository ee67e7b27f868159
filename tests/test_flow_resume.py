"""Caching on inputs: a run reuses every shard an earlier run finished with the same inputs, a
changed setting redoes exactly the stages that depend on it, and a cached reference whose shard
data is gone is recomputed. Real Prefect (test harness), real HTTP to the simulated model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mshep.config import RunConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

QUESTIONS, SHARD = 24, 8


def config_for(sim: SimulatedMathModel, data: Path, output: Path, **changes: Any) -> RunConfig:
    settings: dict[str, Any] = {
        "dataset": {"source": str(data), "limit": QUESTIONS},
        "generator": {"M": 2, "model": "sim"},
        "completer": {"N": 2, "model": "sim"},
        "serving": {"base_url": sim.base_url, "concurrency": 32, "timeout_s": 10},
        "output": {"path": str(output), "formats": ["raw"], "file_types": ["jsonl"]},
        "execution": {"shard_size": SHARD},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        section = settings
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = value
    return RunConfig.model_validate(settings)


def run(config: RunConfig, sim: SimulatedMathModel) -> tuple[dict[str, Any], dict[str, int]]:
    """Run the flow; return its summary and the requests the simulator answered for it."""
    from flows.prm import run_flow

    sim.reset_stats()
    summary = run_flow(config)
    return summary, dict(sim.stats().by_kind)


def raw_rows(output: Path) -> list[str]:
    return (output / "raw" / "data.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def sim(prefect_harness: None, gsm8k_test: Path):
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as model:
        yield model


@pytest.fixture(scope="module")
def first_run(sim: SimulatedMathModel, gsm8k_test: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("resume")
    summary, asked = run(config_for(sim, gsm8k_test, output), sim)
    assert asked["generate"] == QUESTIONS and asked["complete"] > 0
    return output, summary, raw_rows(output)


def test_a_second_run_asks_nothing_and_writes_the_same_dataset(first_run, sim, gsm8k_test):
    output, summary, rows = first_run
    again, asked = run(config_for(sim, gsm8k_test, output), sim)
    assert asked == {"generate": 0, "complete": 0, "unknown": 0}
    assert raw_rows(output) == rows
    assert again["labels"] == summary["labels"]
    assert again["stages"]["complete"]["completion_tokens"] > 0  # usage of the reused shards


def test_serving_settings_do_not_invalidate(first_run, sim, gsm8k_test):
    """Concurrency, timeouts, retries and the token variable say how to reach the model, not
    what it writes: changing them keeps every shard."""
    output, _, rows = first_run
    changed = config_for(
        sim,
        gsm8k_test,
        output,
        serving__concurrency=5,
        serving__max_retries=2,
        serving__token_env="OTHER_TOKEN",
        execution__workers=2,
    )
    _, asked = run(changed, sim)
    assert asked["generate"] == asked["complete"] == 0
    assert raw_rows(output) == rows


def test_a_new_completer_n_reuses_generation_and_redoes_completion(first_run, sim, gsm8k_test):
    output, _, rows = first_run
    summary, asked = run(config_for(sim, gsm8k_test, output, completer__N=3), sim)
    assert asked["generate"] == 0
    assert asked["complete"] > 0
    assert summary["rows_labelled"] == QUESTIONS
    old, new = [json.loads(r) for r in rows], [json.loads(r) for r in raw_rows(output)]
    assert [(r["problem_id"], r["steps"]) for r in new] == [
        (r["problem_id"], r["steps"]) for r in old
    ]
    assert {n for r in new for n in r["rollouts"]} <= {0, 3}
    assert {n for r in old for n in r["rollouts"]} <= {0, 2}


def test_a_new_generator_setting_redoes_generation_and_completion(first_run, sim, gsm8k_test):
    output, _, _ = first_run
    changed = config_for(sim, gsm8k_test, output, generator__sampling={"seed": 7})
    _, asked = run(changed, sim)
    assert asked["generate"] == QUESTIONS and asked["complete"] > 0


def test_a_cached_shard_whose_data_is_gone_is_recomputed(first_run, sim, gsm8k_test):
    output, _, rows = first_run
    from flows.prm import stage_keys

    key = stage_keys(config_for(sim, gsm8k_test, output))["generate"]
    generated = sorted((output / ".work" / f"generate-{key}").glob("shard-00001-*.jsonl"))
    assert len(generated) == 1
    generated[0].unlink()
    _, asked = run(config_for(sim, gsm8k_test, output), sim)
    # Only that shard is asked again; its seeds are the same, so its candidates are too, and the
    # completion shard keyed on their digest is still a cache hit.
    assert asked["generate"] == SHARD
    assert asked["complete"] == 0
    assert generated[0].exists()
    assert raw_rows(output) == rows


def test_cache_off_recomputes_everything(first_run, sim, gsm8k_test):
    output, _, rows = first_run
    _, asked = run(config_for(sim, gsm8k_test, output, execution__cache=False), sim)
    assert asked["generate"] == QUESTIONS and asked["complete"] > 0
    assert raw_rows(output) == rows  # derived seeds: the same requests give the same dataset


def test_changed_labelling_code_recomputes_completion_and_unchanged_code_resumes(
    first_run, sim, gsm8k_test, monkeypatch: pytest.MonkeyPatch
):
    """An upgrade that changes the code of the completion stage (labelling, answers, parsing,
    prompts) changes its key: its shards are redone, generation is reused; the next run with the
    same code reuses everything. The changed code is simulated by a changed code digest."""
    from mshep import shards
    from mshep.records import Stage

    output, _, rows = first_run
    original = shards.code_digest
    monkeypatch.setattr(
        shards, "code_digest", lambda stage: "new" if stage is Stage.COMPLETE else original(stage)
    )
    summary, asked = run(config_for(sim, gsm8k_test, output), sim)
    assert asked["generate"] == 0 and asked["complete"] > 0
    assert summary["stages"]["generate"]["reused_shards"] == QUESTIONS // SHARD
    assert summary["stages"]["complete"]["reused_shards"] == 0
    assert raw_rows(output) == rows  # same seeds, same labels
    _, asked = run(config_for(sim, gsm8k_test, output), sim)
    assert asked == {"generate": 0, "complete": 0, "unknown": 0}


def test_the_code_digest_covers_the_modules_a_stage_runs() -> None:
    from mshep.records import Stage
    from mshep.shards import STAGE_CODE, code_digest

    assert {"labelling", "answers", "parsing", "prompts"} <= set(STAGE_CODE[Stage.COMPLETE])
    assert "labelling" not in STAGE_CODE[Stage.GENERATE]
    assert code_digest(Stage.COMPLETE) != code_digest(Stage.GENERATE)
    assert len(code_digest(Stage.LOAD)) == 16


def test_an_output_that_cannot_be_written_fails_the_run_after_every_shard_is_saved(
    sim: SimulatedMathModel, gsm8k_test: Path, tmp_path: Path
) -> None:
    """The outputs are appended as shards finish; when that fails (here `raw` is a file, not
    a folder), every shard task still runs and is saved, the run fails naming the path, and
    once the path is fixed the same run writes the dataset without asking the model again."""
    from mshep.errors import OutputError

    output = tmp_path / "out"
    output.mkdir()
    (output / "raw").write_text("in the way")
    config = config_for(sim, gsm8k_test, output)
    with pytest.raises(OutputError, match=f"cannot write {output}/raw"):
        run(config, sim)
    assert len(list((output / ".work").glob("complete-*/*.ref.json"))) == QUESTIONS // SHARD
    (output / "raw").unlink()
    summary, asked = run(config, sim)
    assert sum(asked.values()) == 0 and summary["rows_labelled"] == QUESTIONS
    assert len(raw_rows(output)) == QUESTIONS * 2
