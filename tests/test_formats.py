import json
import re
from pathlib import Path

import pytest

from mshep.formats import (
    DROP_STEP_ONE_IN_PROMPT,
    DROP_TAG_IN_QUESTION,
    DROP_TAG_IN_STEP,
    DROP_TRL_PLACEHOLDER,
    DROP_UNKNOWN,
    format_rows,
)
from mshep.records import Hard, LabelledSolution, LabelSource, Solution, StepLabel, Usage

QUESTION = "Janet’s ducks lay 16 eggs per day. How much does she make?"
STEPS = [
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.",
    "She makes 9 * 2 = $<<9*2=18>>18 every day. The answer is: 18",
]


def labelled(hards, steps=STEPS, question=QUESTION):
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
        question=question,
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


def trl_reads(row):
    """What TRL's own Math-Shepherd converter (examples/datasets/math_shepherd.py) needs of a row:
    each tag lines up with a "+"/"-" of `label`, and "Step 1:" splits the prompt in exactly two."""
    inputs = row["input"].replace("ки", "ⶻ")
    tags = [m.start() for m in re.finditer("ⶻ", inputs)]
    return (
        all(row["label"][i] in "+-" for i in tags) and len(inputs[: tags[0]].split("Step 1:")) == 2
    )


def test_b12_tag_inside_a_word_of_the_question_drops_the_row():
    question = "У Маши 12 кирпичиков, она отдала 5. Сколько осталось?"
    item = labelled([Hard.GOOD, Hard.GOOD], question=question)
    out = format_rows([item], "math_shepherd")
    assert out.rows == [] and out.dropped == {DROP_TAG_IN_QUESTION: 1}
    # The row as it would have been written: one tag too many, and TRL cannot read it.
    assert not trl_reads(
        {
            "input": f"{question} Step 1: a ки\nStep 2: b ки",
            "label": f"{question} Step 1: a +\nStep 2: b +",
        }
    )


@pytest.mark.parametrize(
    ("question", "steps", "reason"),
    [
        ("Take ⶻ apples.", STEPS, DROP_TRL_PLACEHOLDER),
        (QUESTION, ["Count ⶻ.", STEPS[1]], DROP_TRL_PLACEHOLDER),
        ("Step 1: add. Step 2: double. What is it?", STEPS, DROP_STEP_ONE_IN_PROMPT),
        (QUESTION, ["Redo Step 1: 2 + 2 = 4.", STEPS[1]], DROP_STEP_ONE_IN_PROMPT),
    ],
)
def test_b12_relatives_text_that_trl_would_split_wrongly(question, steps, reason):
    out = format_rows(
        [labelled([Hard.GOOD, Hard.BAD], steps=steps, question=question)], "math_shepherd"
    )
    assert out.rows == [] and out.dropped == {reason: 1}


def test_b12_the_tag_in_text_does_not_matter_to_the_trl_format():
    """TRL's stepwise format keeps steps in a list: no tag, nothing to mistake for one."""
    question = "У Маши 12 кирпичиков. Сколько?"
    items = [
        labelled([Hard.GOOD, Hard.BAD], question=question),
        labelled([Hard.GOOD, Hard.GOOD], steps=["x ки y", "The answer is: 18"]),
    ]
    out = format_rows(items, "trl")
    assert len(out.rows) == 2 and not out.dropped
    assert out.rows[0]["prompt"] == question


def test_every_math_shepherd_row_is_readable_by_trl():
    questions = [QUESTION, "Сколько будет 2 + 2?", "What is 1 + 1? Step by step.", "Q ки?"]
    steps = [STEPS, ["a ки", "b"], ["Step 1: x", "y"], ["2 + 2 = 4", "The answer is: 4"]]
    items = [labelled([Hard.GOOD, Hard.BAD], steps=s, question=q) for q in questions for s in steps]
    out = format_rows(items, "math_shepherd")
    assert len(out.rows) + sum(out.dropped.values()) == len(items)
    assert out.rows and all(trl_reads(row) for row in out.rows)


def test_outputs_are_appended_in_shard_order_as_shards_finish(tmp_path: Path) -> None:
    """Completion shards finish out of order; each is appended once those before it are:
    the files hold the rows in shard order, as one write at the end would."""
    from flows.stages import Outputs
    from mshep.config import RunConfig
    from mshep.io import write_records
    from mshep.shards import ShardRef

    config = RunConfig.model_validate(
        {
            "dataset": {"source": "x.jsonl"},
            "generator": {"model": "weak"},
            "completer": {"model": "weak"},
            "output": {"path": str(tmp_path), "formats": ["raw"], "file_types": ["jsonl"]},
        }
    )
    refs = []
    for shard in range(3):
        item = labelled([Hard.GOOD, Hard.BAD]).model_copy(update={"problem_id": f"p{shard}"})
        path = str(tmp_path / f"complete-{shard}.jsonl")
        write_records(path, [item])
        refs.append(ShardRef(stage="complete", shard=shard, path=path))
    with Outputs(config) as outputs:
        outputs.add(2, refs[2])
        outputs.add(0, refs[0])
        assert outputs.next == 1 and outputs.writers["raw"].rows == 0  # held, not yet written
        outputs.add(1, refs[1])
        assert outputs.next == 3
        written = outputs.close({})
    rows = (tmp_path / "raw" / "data.jsonl").read_text().splitlines()
    assert [json.loads(row)["problem_id"] for row in rows] == ["p0", "p1", "p2"]
    assert written["rows_out"] == {"raw": 3} and written["problems_labelled"] == 3
