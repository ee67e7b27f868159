"""Small builders shared by the unit tests."""

from __future__ import annotations

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
