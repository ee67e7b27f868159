"""Small builders shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mshep.labelling import LabelTarget
from mshep.records import Solution


def make_target(
    steps: int = 3, answer: str = "18", golden: str = "18", problem_id: str = "q0", index: int = 0
) -> LabelTarget:
    solution = Solution(
        steps=[f"step {k} of {problem_id}" for k in range(1, steps + 1)],
        answer=answer,
        model="weak",
        index=index,
    )
    return LabelTarget(
        problem_id=problem_id,
        question=f"question {problem_id}?",
        golden_answer=golden,
        solution=solution,
    )


def prefix_len_of(user_message: str) -> int:
    """How many given steps a completer prompt carries (its last 'Step k:' line)."""
    return sum(1 for line in user_message.splitlines() if line.startswith("Step "))


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in os.environ while the block runs; each variable as it was afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
