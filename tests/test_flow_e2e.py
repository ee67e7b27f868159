"""End to end: the Prefect flow under the real test harness, real HTTP to the simulated model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mshep.answers import answers_match
from mshep.config import RunConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

pytestmark = pytest.mark.slow

QUESTIONS = 50


def run(sim: SimulatedMathModel, data: Path, output: Path, timeout_s: float = 10) -> dict[str, Any]:
    from flows.prm import run_flow

    config = RunConfig.model_validate(
        {
            "dataset": {"source": str(data), "limit": QUESTIONS},
            "generator": {"M": 4, "model": "sim"},
            "completer": {"N": 4, "model": "sim"},
            "serving": {"base_url": sim.base_url, "concurrency": 64, "timeout_s": timeout_s},
            "output": {"path": str(output)},
            "execution": {"shard_size": 20},
        }
    )
    return run_flow(config)


def step_accuracy(sim: SimulatedMathModel, raw_rows: list[dict[str, Any]]) -> float:
    """Share of steps labelled as the simulator's truth says (good until its first wrong step)."""
    right = total = 0
    for row in raw_rows:
        first_wrong = sim.first_wrong_step(row["question"], row["steps"])
        for k, label in enumerate(row["hard_labels"], start=1):
            truth = "good" if first_wrong is None or k < first_wrong else "bad"
            right += label == truth
            total += 1
    return right / total


def load(output: Path, name: str) -> Any:
    import datasets

    return datasets.load_dataset("parquet", data_files=str(output / name / "data.parquet"))["train"]


@pytest.fixture(scope="module")
def clean_run(prefect_harness: None, gsm8k_test: Path, tmp_path_factory: pytest.TempPathFactory):
    output = tmp_path_factory.mktemp("clean")
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim:
        summary = run(sim, gsm8k_test, output)
        raw = load(output, "raw").to_list()
        return summary, output, step_accuracy(sim, raw), raw


def test_every_row_is_accounted_for(clean_run):
    summary, _, _, _ = clean_run
    assert summary["rows_in"] == QUESTIONS
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS
    assert summary["rows_labelled"] == QUESTIONS
    assert summary["solutions_generated"] == QUESTIONS * 4
    assert summary["solutions_labelled"] == QUESTIONS * 4


def test_labels_match_the_simulator_truth(clean_run):
    _, _, accuracy, _ = clean_run
    print(f"step-label accuracy (clean): {accuracy:.4f}")
    assert accuracy >= 0.9


def test_outputs_load_with_datasets_and_have_the_documented_columns(clean_run):
    summary, output, _, raw = clean_run
    shepherd, trl = load(output, "math_shepherd"), load(output, "trl")
    assert shepherd.column_names == ["input", "label"]
    assert trl.column_names == ["prompt", "completions", "labels"]
    assert "soft_labels" in raw[0] and "first_bad_step" in raw[0]
    assert len(raw) == QUESTIONS * 4
    assert (
        len(trl)
        == summary["rows_out"]["trl"]
        == len(raw) - sum(summary["rows_dropped"]["trl"].values())
    )
    assert " ки" in shepherd[0]["input"]
    jsonl = (output / "trl" / "data.jsonl").read_text().splitlines()
    assert len(jsonl) == len(trl) and json.loads(jsonl[0])["prompt"]
    assert json.loads((output / "summary.json").read_text())["rows_in"] == QUESTIONS


def test_faults_cost_time_not_rows_or_labels(clean_run, gsm8k_test: Path, tmp_path: Path):
    """10 % 500s, 5 % 429s, 2 % timeouts, 2 % malformed envelopes and 2 % garbled replies: every
    row is still labelled (retries and bounded re-sampling), labels within a point of clean."""
    summary, _, accuracy, _ = clean_run
    faults = SimulatorConfig(
        p_500=0.10, p_429=0.05, p_timeout=0.02, p_malformed=0.02, p_garbled=0.02,
        timeout_sleep_s=3.0, retry_after_s=0,
    )  # fmt: skip
    with SimulatedMathModel(faults, gsm8k_test) as sim:
        faulty = run(sim, gsm8k_test, tmp_path, timeout_s=1.0)
        faulty_accuracy = step_accuracy(sim, load(tmp_path, "raw").to_list())
        stats = sim.stats()
    print(f"step-label accuracy (faults): {faulty_accuracy:.4f}; faults {stats.faults}")
    assert sum(stats.faults.values()) >= 0.1 * stats.requests  # ~19% drawn
    assert stats.faults["garbled"] > 0 and stats.faults["timeout"] > 0
    assert faulty["rows_labelled"] == QUESTIONS  # every row labelled, not only accounted for
    # A candidate whose reply stayed unreadable through every re-sample (3 garbled replies in a
    # row: rare) is a recorded failure of its own; every other candidate is a row.
    lost = sum(faulty["stages"]["generate"]["failures"].values())
    assert lost <= 1, faulty["stages"]["generate"]["failures"]
    assert faulty["solutions_generated"] == QUESTIONS * 4 - lost
    assert faulty["rows_out"] == {name: rows - lost for name, rows in summary["rows_out"].items()}
    assert faulty["stages"]["generate"]["resampled"] + faulty["stages"]["complete"]["resampled"] > 0
    assert abs(faulty_accuracy - accuracy) <= 0.01


def test_golden_from_a_strong_model(prefect_harness: None, gsm8k_test: Path, tmp_path: Path):
    from flows.prm import run_flow

    with (
        SimulatedMathModel(SimulatorConfig(p_wrong_step=0.0), gsm8k_test) as strong,
        SimulatedMathModel(SimulatorConfig(), gsm8k_test) as weak,
    ):
        config = RunConfig.model_validate(
            {
                "dataset": {"source": str(gsm8k_test), "limit": 10, "answer_column": None},
                "golden": {"source": "model", "model": "strong"},
                "generator": {"M": 2, "model": "weak"},
                "completer": {"N": 2, "model": "weak"},
                "serving": {"base_url": weak.base_url, "golden_base_url": strong.base_url},
                "output": {"path": str(tmp_path)},
            }
        )
        summary = run_flow(config)
        strong_requests = strong.stats().by_kind
        raw = load(tmp_path, "raw").to_list()
        truth = {row["question"]: strong.reference(row["question"]).answer for row in raw}
    assert summary["rows_labelled"] == 10
    assert summary["stages"]["golden"]["requests"] == 10
    assert strong_requests.get("generate") == 10 and not strong_requests.get("complete")
    assert len(truth) == 10
    assert all(answers_match(row["golden_answer"], truth[row["question"]]) for row in raw)


def test_summary_has_the_quality_report(clean_run):
    summary, _, _, raw = clean_run
    quality = summary["quality"]
    assert quality["solutions"] == len(raw) == QUESTIONS * 4
    assert quality["strategies"] == {"first_error": QUESTIONS * 4}
    witnessed = sum(1 for row in raw if set(row["label_sources"]) == {"witness"})
    assert quality["steps_by_source"]["witness"] == sum(
        len(row["steps"]) for row in raw if set(row["label_sources"]) == {"witness"}
    )
    assert 0 < witnessed < len(raw)
    assert quality["labels_per_1k_completion_tokens"] > 0
    assert sum(quality["first_bad_step"].values()) + quality["no_bad_step"] == len(raw)


def test_difficulty_filter_drops_uniform_questions_and_counts_them(
    prefect_harness: None, gsm8k_test: Path, tmp_path: Path
):
    from flows.prm import run_flow

    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim:
        config = RunConfig.model_validate(
            {
                "dataset": {"source": str(gsm8k_test), "limit": 20},
                "generator": {"M": 4, "model": "sim"},
                "completer": {"N": 2, "model": "sim", "difficulty_filter": True},
                "serving": {"base_url": sim.base_url},
                "output": {"path": str(tmp_path), "formats": ["raw"]},
            }
        )
        summary = run_flow(config)
    dropped = {k: v for k, v in summary["rows_not_labelled"].items() if k.startswith("filter: ")}
    assert dropped.get("filter: all candidates right", 0) > 0
    assert summary["rows_labelled"] + sum(dropped.values()) == 20
    raw = load(tmp_path, "raw").to_list()
    for problem in {row["problem_id"] for row in raw}:
        answers = [row["hard_labels"][-1] for row in raw if row["problem_id"] == problem]
        assert "good" in answers and "bad" in answers  # mixed: the questions worth labelling
