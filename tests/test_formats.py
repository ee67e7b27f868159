from mshep.formats import DROP_TAG_IN_STEP, DROP_UNKNOWN, format_rows
from mshep.records import Hard, LabelledSolution, LabelSource, Solution, StepLabel, Usage

QUESTION = "Janet’s ducks lay 16 eggs per day. How much does she make?"
STEPS = [
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
    "She makes 9 * 2 = $<<9*2=18>>18 every day. The answer is: 18",
]


def labelled(hards, steps=STEPS):
    labels = [
        StepLabel(
            hard=h,
            soft={Hard.GOOD: 1.0, Hard.BAD: 0.0}.get(h),
            valid=4 if h != Hard.UNKNOWN else 0,
            correct=4 if h == Hard.GOOD else 0,
            rollouts=4,
            source=LabelSource.ROLLOUTS,
        )
        for h in hards
    ]
    solution = Solution(
        steps=steps,
        answer="18",
        model="weak",
        index=2,
        usage=Usage(requests=1, prompt_tokens=10, completion_tokens=30),
    )
    return LabelledSolution(
        problem_id="7",
        question=QUESTION,
        golden_answer="18",
        solution=solution,
        labels=labels,
        strategy="per_step",
        completer_model="completer",
        completion_usage=Usage(requests=1, prompt_tokens=50, completion_tokens=80),
    )


def test_math_shepherd_row_matches_the_public_dataset_layout():
    (row,) = format_rows([labelled([Hard.GOOD, Hard.BAD])], "math_shepherd").rows
    assert row == {
        "input": f"{QUESTION} Step 1: {STEPS[0]} ки\nStep 2: {STEPS[1]} ки",
        "label": f"{QUESTION} Step 1: {STEPS[0]} +\nStep 2: {STEPS[1]} -",
    }


def test_trl_row_is_stepwise_supervision():
    (row,) = format_rows([labelled([Hard.GOOD, Hard.BAD])], "trl").rows
    assert row == {
        "prompt": QUESTION,
        "completions": [f"Step 1: {STEPS[0]}", f"Step 2: {STEPS[1]}"],
        "labels": [True, False],
    }


def test_raw_row_keeps_everything():
    (row,) = format_rows([labelled([Hard.GOOD, Hard.UNKNOWN])], "raw").rows
    assert row["hard_labels"] == ["good", "unknown"]
    assert row["soft_labels"] == [1.0, None]
    assert row["valid_rollouts"] == [4, 0]
    assert row["first_bad_step"] is None and row["has_unknown"] is True
    assert row["solution_index"] == 2
    assert (row["generator_model"], row["completer_model"]) == ("weak", "completer")
    assert row["generation_completion_tokens"] == 30
    assert row["completion_completion_tokens"] == 80


def test_unknown_steps_never_become_good_or_bad_in_training_formats():
    items = [labelled([Hard.GOOD, Hard.UNKNOWN]), labelled([Hard.GOOD, Hard.GOOD])]
    for name in ("math_shepherd", "trl"):
        out = format_rows(items, name)
        assert len(out.rows) == 1
        assert out.dropped == {DROP_UNKNOWN: 1}
    assert len(format_rows(items, "raw").rows) == 2


def test_a_step_containing_the_tag_is_dropped_not_mislabelled():
    item = labelled([Hard.GOOD, Hard.GOOD], steps=["x ки y", "The answer is: 18"])
    out = format_rows([item], "math_shepherd")
    assert out.rows == [] and out.dropped == {DROP_TAG_IN_STEP: 1}
