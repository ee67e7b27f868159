"""Pure. Math-Shepherd labelling as a state machine.

`Labeller.pending()` says which (solution, prefix) pairs need N rollouts next; `submit()` takes the
rollouts of one pair; when nothing is pending, `results()` gives every solution its step labels.
The caller sends all pending pairs of a round to the backend in one call, so a strategy that needs
several rounds (a first-error search) costs a few round trips, not one per step.

Rules (DESIGN.md): a step is good when any valid rollout from its prefix reaches the golden
answer; soft value = correct / valid; failed rollouts (error, unparseable, truncated) count as
neither, missing ones as failed; no valid rollout → unknown. The last step has no continuation:
its label is whether the solution's own final answer is the golden one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mshep.answers import answers_match
from mshep.backends.base import Completion
from mshep.parsing import ParseFailure, extract_final_answer, parse_json_solution
from mshep.records import (
    Hard,
    LabelledSolution,
    LabelSource,
    Rollout,
    RolloutStatus,
    Solution,
    StepLabel,
    Usage,
)


@dataclass(frozen=True)
class LabelTarget:
    """A candidate solution to label, with what it is judged against."""

    problem_id: str
    question: str
    golden_answer: str
    solution: Solution


@dataclass(frozen=True)
class PrefixQuery:
    """The first `prefix_len` steps of target number `target` need N rollouts."""

    target: int
    prefix_len: int


@dataclass
class SolutionState:
    target: LabelTarget
    n: int
    rollouts: dict[int, list[Rollout]] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)

    @property
    def num_steps(self) -> int:
        return len(self.target.solution.steps)

    @property
    def final_answer_correct(self) -> bool:
        return answers_match(self.target.solution.answer, self.target.golden_answer)


class Strategy(Protocol):
    """Which prefixes to roll out next, and how to turn what came back into labels."""

    name: str

    def next_prefixes(self, state: SolutionState) -> list[int]: ...

    def decide(self, state: SolutionState) -> list[StepLabel]: ...


def label_from_rollouts(rollouts: Sequence[Rollout], n: int) -> StepLabel:
    """Hard and soft estimation for one prefix from its rollouts (missing ones count as failed)."""
    valid = [r for r in rollouts if r.valid]
    correct = sum(1 for r in valid if r.correct)
    hard = Hard.UNKNOWN if not valid else Hard.GOOD if correct else Hard.BAD
    return StepLabel(
        hard=hard,
        soft=correct / len(valid) if valid else None,
        valid=len(valid),
        correct=correct,
        rollouts=max(n, len(rollouts)),
        source=LabelSource.ROLLOUTS,
    )


def label_final_step(state: SolutionState) -> StepLabel:
    correct = state.final_answer_correct
    return StepLabel(
        hard=Hard.GOOD if correct else Hard.BAD,
        soft=1.0 if correct else 0.0,
        source=LabelSource.FINAL_ANSWER,
    )


class PerStep:
    """The paper's and the recipe's estimation: N rollouts from every prefix but the whole."""

    name = "per_step"

    def next_prefixes(self, state: SolutionState) -> list[int]:
        return [k for k in range(1, state.num_steps) if k not in state.rollouts]

    def decide(self, state: SolutionState) -> list[StepLabel]:
        labels = [
            label_from_rollouts(state.rollouts[k], state.n) for k in range(1, state.num_steps)
        ]
        return [*labels, label_final_step(state)]


STRATEGIES: dict[str, type[Strategy]] = {"per_step": PerStep}


def make_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


class Labeller:
    def __init__(self, targets: Sequence[LabelTarget], n: int, strategy: Strategy) -> None:
        if n < 1:
            raise ValueError(f"N must be at least 1, got {n}")
        self.states = [SolutionState(target=t, n=n) for t in targets]
        self.strategy = strategy
        self.rounds = 0
        self._asked: set[PrefixQuery] = set()

    def pending(self) -> list[PrefixQuery]:
        """The next round: every prefix some strategy still needs, not yet answered."""
        queries = [
            PrefixQuery(index, k)
            for index, state in enumerate(self.states)
            for k in self.strategy.next_prefixes(state)
        ]
        if queries:
            self.rounds += 1
        return queries

    def submit(
        self, query: PrefixQuery, rollouts: Sequence[Rollout], usage: Usage | None = None
    ) -> None:
        if query in self._asked:
            raise ValueError(f"prefix {query} was already answered")
        state = self.states[query.target]
        if not 1 <= query.prefix_len < state.num_steps:
            raise ValueError(f"prefix length {query.prefix_len} outside 1..{state.num_steps - 1}")
        self._asked.add(query)
        state.rollouts[query.prefix_len] = list(rollouts)
        if usage is not None:
            state.usage = state.usage + usage

    @property
    def done(self) -> bool:
        return all(not self.strategy.next_prefixes(state) for state in self.states)

    def results(self, completer_model: str = "") -> list[LabelledSolution]:
        if not self.done:
            raise RuntimeError("labelling is not finished: prefixes are still pending")
        return [
            LabelledSolution(
                problem_id=s.target.problem_id,
                question=s.target.question,
                golden_answer=s.target.golden_answer,
                solution=s.target.solution,
                labels=self.strategy.decide(s),
                strategy=self.strategy.name,
                completer_model=completer_model,
                completion_usage=s.usage,
            )
            for s in self.states
        ]


def read_rollout(completion: Completion, golden_answer: str, structured: bool = False) -> Rollout:
    """One completer reply → a rollout; truncated, failed and unreadable ones are not valid."""
    if completion.finish_reason == "error":
        return Rollout(status=RolloutStatus.ERROR, detail="request failed")
    if completion.finish_reason == "length":
        # Even an answer seen in a cut-off reply may itself be cut ("18" of "1800"): not valid.
        return Rollout(status=RolloutStatus.TRUNCATED, detail="stopped at max_tokens")
    if structured:
        parsed = parse_json_solution(completion.text)
        answer: str | None = parsed.answer if parsed else None
        reason = parsed.reason if isinstance(parsed, ParseFailure) else ""
    else:
        found = extract_final_answer(completion.text)
        answer = found if isinstance(found, str) else None
        reason = "" if isinstance(found, str) else found.reason
    if answer is None:
        return Rollout(status=RolloutStatus.UNPARSEABLE, detail=reason)
    return Rollout(
        status=RolloutStatus.OK, answer=answer, correct=answers_match(answer, golden_answer)
    )
