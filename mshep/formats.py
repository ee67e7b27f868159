"""Pure. Labelled solutions → training rows, one row per candidate solution.

- `math_shepherd`: like peiyi9979/Math-Shepherd: `input` is the question, a space, then the steps
  as "Step k: …" lines each followed by " ки"; `label` is the same text with " +" / " -".
- `trl`: TRL's stepwise-supervision format: `prompt`, `completions` (list[str]), `labels`
  (list[bool]).
- `raw`: everything known about the row: soft values, rollout counts, label sources, first bad
  step, models, usage of each stage.

A step whose label is unknown is never written as good or bad: the training formats drop that row
and count it; `raw` keeps it.

`math_shepherd` marks where each step ends with the tag "ки" and nothing else, so a row is dropped
and counted when its text would put a tag, or what TRL's Math-Shepherd converter takes for one,
where no step ends: "ки" in the question (it is inside many Russian words: "кирпичиков") or in a
step, TRL's stand-in "ⶻ" for the tag, or a second "Step 1:" before the first tag (the converter
splits the question from the first step there). `trl` keeps the steps in a list, so it needs none
of this.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from mshep.records import Hard, LabelledSolution

FormatName = Literal["math_shepherd", "trl", "raw"]
FORMATS: tuple[FormatName, ...] = ("math_shepherd", "trl", "raw")

STEP_TAG = "ки"
TAG_FOR = {Hard.GOOD: "+", Hard.BAD: "-"}

# What TRL's converter (trl/examples/datasets/math_shepherd.py) replaces the tag with, and where it
# splits the question from the first step.
TRL_PLACEHOLDER = "ⶻ"
FIRST_STEP = "Step 1:"

DROP_UNKNOWN = "a step's label is unknown (no valid rollout)"
DROP_TAG_IN_STEP = f"a step contains the step tag {STEP_TAG!r}"
DROP_TAG_IN_QUESTION = f"the question contains the step tag {STEP_TAG!r}"
DROP_TRL_PLACEHOLDER = f"the text contains {TRL_PLACEHOLDER!r}, TRL's stand-in for the step tag"
DROP_STEP_ONE_IN_PROMPT = f"{FIRST_STEP!r} appears in the question or again in the first step"


@dataclass
class Formatted:
    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def step_texts(item: LabelledSolution) -> list[str]:
    return [f"Step {k}: {step}" for k, step in enumerate(item.solution.steps, start=1)]


def _why_not_tagged(item: LabelledSolution) -> str | None:
    """Why the math_shepherd text of `item` would have a tag where no step ends, if it would."""
    question, steps = item.question, item.solution.steps
    if STEP_TAG in question:
        return DROP_TAG_IN_QUESTION
    if any(STEP_TAG in step for step in steps):
        return DROP_TAG_IN_STEP
    if TRL_PLACEHOLDER in question or any(TRL_PLACEHOLDER in step for step in steps):
        return DROP_TRL_PLACEHOLDER
    if FIRST_STEP in question or (steps and FIRST_STEP in steps[0]):
        return DROP_STEP_ONE_IN_PROMPT
    return None


def _why_not_trainable(item: LabelledSolution, name: FormatName) -> str | None:
    if name == "raw":
        return None
    if item.has_unknown:
        return DROP_UNKNOWN
    return _why_not_tagged(item) if name == "math_shepherd" else None


def to_math_shepherd_row(item: LabelledSolution) -> dict[str, Any]:
    steps = step_texts(item)
    tags = [TAG_FOR[label.hard] for label in item.labels]
    return {
        "input": item.question + " " + "\n".join(f"{s} {STEP_TAG}" for s in steps),
        "label": item.question
        + " "
        + "\n".join(f"{s} {t}" for s, t in zip(steps, tags, strict=True)),
    }


def to_trl_row(item: LabelledSolution) -> dict[str, Any]:
    return {
        "prompt": item.question,
        "completions": step_texts(item),
        "labels": [label.hard is Hard.GOOD for label in item.labels],
    }


def to_raw_row(item: LabelledSolution) -> dict[str, Any]:
    solution, labels = item.solution, item.labels
    return {
        "problem_id": item.problem_id,
        "question": item.question,
        "golden_answer": item.golden_answer,
        "solution_index": solution.index,
        "steps": list(solution.steps),
        "answer": solution.answer,
        "hard_labels": [label.hard.value for label in labels],
        "soft_labels": [label.soft for label in labels],
        "valid_rollouts": [label.valid for label in labels],
        "correct_rollouts": [label.correct for label in labels],
        "rollouts": [label.rollouts for label in labels],
        "label_sources": [label.source.value for label in labels],
        "first_bad_step": item.first_bad_step,
        "has_unknown": item.has_unknown,
        "strategy": item.strategy,
        "generator_model": solution.model,
        "completer_model": item.completer_model,
        "generation_prompt_tokens": solution.usage.prompt_tokens,
        "generation_completion_tokens": solution.usage.completion_tokens,
        "completion_requests": item.completion_usage.requests,
        "completion_prompt_tokens": item.completion_usage.prompt_tokens,
        "completion_completion_tokens": item.completion_usage.completion_tokens,
    }


_WRITERS = {"math_shepherd": to_math_shepherd_row, "trl": to_trl_row, "raw": to_raw_row}

# Each format's columns and their types, fixed: files are written shard by shard, and a shard
# where a column happens to be all null (no bad step, no soft value) must not decide its type.
COLUMNS: dict[FormatName, dict[str, str]] = {
    "math_shepherd": {"input": "string", "label": "string"},
    "trl": {"prompt": "string", "completions": "list<string>", "labels": "list<bool>"},
    "raw": {
        "problem_id": "string",
        "question": "string",
        "golden_answer": "string",
        "solution_index": "int64",
        "steps": "list<string>",
        "answer": "string",
        "hard_labels": "list<string>",
        "soft_labels": "list<float64>",
        "valid_rollouts": "list<int64>",
        "correct_rollouts": "list<int64>",
        "rollouts": "list<int64>",
        "label_sources": "list<string>",
        "first_bad_step": "int64",
        "has_unknown": "bool",
        "strategy": "string",
        "generator_model": "string",
        "completer_model": "string",
        "generation_prompt_tokens": "int64",
        "generation_completion_tokens": "int64",
        "completion_requests": "int64",
        "completion_prompt_tokens": "int64",
        "completion_completion_tokens": "int64",
    },
}


def format_rows(items: Iterable[LabelledSolution], name: FormatName) -> Formatted:
    """Rows of one format; rows the training formats cannot hold are counted by reason."""
    writer = _WRITERS[name]
    out = Formatted()
    for item in items:
        reason = _why_not_trainable(item, name)
        if reason:
            out.dropped[reason] += 1
        else:
            out.rows.append(writer(item))
    return out
