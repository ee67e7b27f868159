"""Pure. Labelled solutions → training rows, one row per candidate solution.

- `math_shepherd`: like peiyi9979/Math-Shepherd: `input` is the question, a space, then the steps
  as "Step k: …" lines each followed by " ки"; `label` is the same text with " +" / " -".
- `trl`: TRL's stepwise-supervision format: `prompt`, `completions` (list[str]), `labels`
  (list[bool]).
- `raw`: everything known about the row: soft values, rollout counts, label sources, first bad
  step, models, usage of each stage.

A step whose label is unknown is never written as good or bad: the training formats drop that row
and count it; `raw` keeps it.
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

DROP_UNKNOWN = "a step's label is unknown (no valid rollout)"
DROP_TAG_IN_STEP = f"a step contains the step tag {STEP_TAG!r}"


@dataclass
class Formatted:
    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def step_texts(item: LabelledSolution) -> list[str]:
    return [f"Step {k}: {step}" for k, step in enumerate(item.solution.steps, start=1)]


def _why_not_trainable(item: LabelledSolution) -> str | None:
    if item.has_unknown:
        return DROP_UNKNOWN
    if any(STEP_TAG in step for step in item.solution.steps):
        return DROP_TAG_IN_STEP
    return None


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


def format_rows(items: Iterable[LabelledSolution], name: FormatName) -> Formatted:
    """Rows of one format; rows the training formats cannot hold are counted by reason."""
    writer = _WRITERS[name]
    out = Formatted()
    for item in items:
        reason = None if name == "raw" else _why_not_trainable(item)
        if reason:
            out.dropped[reason] += 1
        else:
            out.rows.append(writer(item))
    return out
