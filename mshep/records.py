"""Pure. The typed records that flow between the stages: problems, solutions, rollouts, labels.

Labels are typed values (`Hard.GOOD`, `Hard.BAD`, `Hard.UNKNOWN`); the characters a training format
uses for them (`+`, `-`, `ки`) belong to `mshep.formats` alone.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Stage(StrEnum):
    """The stages of a run, in order: task names, shard folders and failure reasons use these."""

    LOAD = "load"
    GOLDEN = "golden"
    GENERATE = "generate"
    FILTER = "filter"
    COMPLETE = "complete"
    WRITE = "write"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(Record):
    """Tokens and requests spent; adds up with `+`."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            requests=self.requests + other.requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Problem(Record):
    """One input row: a question and, when the dataset has one, its reference answer."""

    id: str = Field(description="Stable id of the row (the dataset's id column or its row index).")
    question: str
    reference_answer: str | None = Field(
        default=None, description="Final answer extracted from the dataset's reference solution."
    )
    reference_solution: str | None = None


class Solution(Record):
    """A step-by-step solution, steps without their 'Step k:' prefixes."""

    steps: list[str] = Field(min_length=1)
    answer: str
    model: str = ""
    index: int = Field(default=0, description="Which of the M candidates of its problem this is.")
    usage: Usage = Field(default_factory=Usage)


class KeyedSolution(Record):
    """A solution with the id of its problem, as stored in shard files."""

    problem_id: str
    solution: Solution


class Failure(Record):
    """Why something produced no usable result; counted in the run summary, never dropped."""

    stage: str
    reason: str
    detail: str = ""
    problem_id: str | None = None


class Hard(StrEnum):
    """Hard estimation of a step (Math-Shepherd eq. 3)."""

    GOOD = "good"
    BAD = "bad"
    UNKNOWN = "unknown"


class LabelSource(StrEnum):
    """What decided a step's label."""

    ROLLOUTS = "rollouts"  # N continuations of its prefix
    FINAL_ANSWER = "final_answer"  # the last step: the solution's own answer against the golden one
    WITNESS = "witness"  # a prefix of a solution whose own final answer is right
    SEARCH = "search"  # inferred from neighbouring prefixes by the first-error search


class RolloutStatus(StrEnum):
    OK = "ok"
    ERROR = "error"  # the request failed (transport, server) after retries
    UNPARSEABLE = "unparseable"  # no final answer could be read from the reply
    TRUNCATED = "truncated"  # stopped by max_tokens before an answer


class Rollout(Record):
    """One continuation of a solution prefix; only `OK` rollouts count towards a label."""

    status: RolloutStatus
    answer: str | None = None
    correct: bool | None = None
    detail: str = ""

    @property
    def valid(self) -> bool:
        return self.status is RolloutStatus.OK


class StepLabel(Record):
    hard: Hard
    soft: float | None = Field(
        default=None, description="correct / valid rollouts; None when nothing was measured."
    )
    valid: int = Field(default=0, description="Rollouts that came back with a readable answer.")
    correct: int = Field(default=0, description="Valid rollouts that reached the golden answer.")
    rollouts: int = Field(default=0, description="Rollouts asked for, failed ones included.")
    source: LabelSource


class LabelledSolution(Record):
    """A candidate solution with one label per step, and what labelling it cost."""

    problem_id: str
    question: str
    golden_answer: str
    solution: Solution
    labels: list[StepLabel]
    strategy: str
    completer_model: str = ""
    completion_usage: Usage = Field(default_factory=Usage)

    @property
    def first_bad_step(self) -> int | None:
        """1-based position of the first step labelled bad, if any."""
        for position, label in enumerate(self.labels, start=1):
            if label.hard is Hard.BAD:
                return position
        return None

    @property
    def has_unknown(self) -> bool:
        return any(label.hard is Hard.UNKNOWN for label in self.labels)
