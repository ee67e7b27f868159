"""The cost and quality report, on a small hand-made run whose figures can be counted by eye."""

from mshep.records import Hard, LabelledSolution, LabelSource, StepLabel
from mshep.summary import QualityReport, RunSummary, StageSummary, quality_report
from tests.helpers import make_target

G, B, U = Hard.GOOD, Hard.BAD, Hard.UNKNOWN
W, S, R, F = LabelSource.WITNESS, LabelSource.SEARCH, LabelSource.ROLLOUTS, LabelSource.FINAL_ANSWER


def solution(strategy: str, labels: list[StepLabel], problem_id: str) -> LabelledSolution:
    target = make_target(steps=len(labels), problem_id=problem_id)
    return LabelledSolution(
        problem_id=problem_id,
        question=target.question,
        golden_answer=target.golden_answer,
        solution=target.solution,
        labels=labels,
        strategy=strategy,
    )


def rolled(hard: Hard, valid: int, correct: int) -> StepLabel:
    soft = correct / valid if valid else None
    return StepLabel(hard=hard, soft=soft, valid=valid, correct=correct, rollouts=4, source=R)


LABELLED = [
    solution("first_error", [StepLabel(hard=G, source=W)] * 3, "witnessed"),
    solution(
        "first_error",
        [
            StepLabel(hard=G, source=S),
            rolled(G, 4, 2),
            rolled(B, 4, 0),
            StepLabel(hard=B, soft=0.0, source=F),
        ],
        "searched",
    ),
    solution(
        "per_step",
        [rolled(U, 0, 0), rolled(B, 3, 0), StepLabel(hard=B, soft=0.0, source=F)],
        "per-step",
    ),
]
STAGES = {
    "generate": StageSummary(requests=3, completion_tokens=1000),
    "complete": StageSummary(requests=4, completion_tokens=500),
}


def test_report_counts_cost_sources_unknowns_and_first_bad_steps():
    report = quality_report(LABELLED, STAGES)
    assert (report.solutions, report.steps, report.labels_known) == (3, 10, 9)
    assert report.strategies == {"first_error": 2, "per_step": 1}
    assert report.requests == {"generate": 3, "complete": 4}
    assert report.completion_tokens == {"generate": 1000, "complete": 500}
    assert (report.prefixes_evaluated, report.rollouts_requested) == (4, 16)
    assert report.labels_per_1k_completion_tokens == 18.0  # 9 labels / 500 tokens
    assert report.labels_per_1k_tokens_overall == 6.0  # 9 labels / 1,500 tokens
    assert report.steps_by_source == {"rollouts": 4, "final_answer": 2, "witness": 3, "search": 1}
    assert report.unknown_share == 0.1
    assert report.first_bad_step == {3: 1, 2: 1}
    assert report.no_bad_step == 1


def test_no_completion_tokens_gives_no_rate_rather_than_a_division_by_zero():
    report = quality_report(LABELLED[:1], {"complete": StageSummary()})
    assert report.labels_per_1k_completion_tokens is None
    assert report.labels_per_1k_tokens_overall is None
    assert quality_report([], {}).unknown_share == 0.0


def test_run_summary_shows_the_report_and_round_trips_through_json():
    summary = RunSummary(rows_in=3, rows_labelled=3, quality=quality_report(LABELLED, STAGES))
    text = "\n".join(summary.lines())
    assert "10 (10.0% unknown)" in text
    assert "witness 3" in text and "18.00 (complete)" in text
    assert "first bad step: 2: 1, 3: 1; none 1" in text
    again = RunSummary.model_validate_json(summary.model_dump_json())
    assert again == summary and isinstance(again.quality, QualityReport)
    assert "first bad step" not in "\n".join(RunSummary(rows_in=0, rows_labelled=0).lines())
