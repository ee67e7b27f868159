"""Pure. Math-Shepherd labelling as a state machine.

`Labeller.pending_for(i)` says which prefixes of candidate i need N rollouts next (none while
some it was given are unanswered); `submit()` takes the rollouts of one (candidate, prefix)
pair; when nothing is pending, `results()` gives every solution its step labels. Candidates are
independent: the caller drives each one as its answers come back (`mshep.completion`), so a
candidate's next probe never waits for another candidate's. `pending()` is every candidate's at
once (one round of a driver that waits for the whole round). Either way the labels depend only
on the rollouts of each pair.

Rules (docs/design.md, "Labels"): a step is good when any valid rollout from its prefix reaches
the golden answer; soft value = correct / valid; failed rollouts (error, unparseable, truncated)
count as neither, missing ones as failed; no valid rollout → unknown. The last step has no
continuation: its label is whether the solution's own final answer is the golden one.

Strategies:
- `per_step` (the paper's, the recipe's): N rollouts from every prefix but the whole; labels and
  soft values as measured, step by step, even when not monotone (good, bad, good).
- `first_error`: for a candidate whose own answer is wrong, a binary search for the first bad
  step. The bracket starts at prefix 0 (the question: good) and prefix L (the whole: bad by its
  answer) and halves each round: at most ceil(log2 L) prefixes rolled out. Steps up to the last
  good prefix are good, from the first bad one on bad; evaluated steps keep their measured
  values, the others get source `search` and no soft value (none was measured).
  - Unknown (a probe with no valid rollout) ends the search: the steps strictly inside the
    bracket are unknown (the probe keeps its counts), those outside keep their labels. Rollouts
    that all fail tend to fail again (a prefix that makes the model ramble to max_tokens), and a
    retry would need fresh seeds and more rounds; the training formats drop such a row.
  - Non-monotone results: every probe lies strictly inside the bracket, so the probes seen are
    always consistent (each good one before each bad one) and a non-monotone pattern goes
    unnoticed. The search finds *a* good→bad transition, the one its probes bracket, not
    necessarily the first: with prefix 2 bad, 3–5 good and 6 bad it may report step 6. Its labels
    are monotone by construction and mean "the search placed the first error here"; `per_step`
    keeps the raw, possibly non-monotone labels.
  - Without the witness rule a candidate whose answer is right has no bad end to bracket: it is
    rolled out from every prefix, as `per_step` does.

The witness rule (both strategies, on by default): a candidate whose own final answer is right
shows that each of its prefixes can reach the answer, so it needs no rollouts: every step is good,
source `witness`, no soft value. Turn it off for soft values on every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from mshep.answers import answers_match
from mshep.records import Hard, LabelledSolution, LabelSource, Rollout, Solution, StepLabel, Usage


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

    @cached_property
    def final_answer_correct(self) -> bool:
        # Cached: strategies ask every round, and a symbolic comparison is not free.
        return answers_match(self.target.solution.answer, self.target.golden_answer)


class Strategy(Protocol):
    """Which prefixes to roll out next, and how to turn what came back into labels."""

    name: str
    witness: bool

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


def witness_labels(state: SolutionState) -> list[StepLabel]:
    """Every step good on the evidence of the solution's own right answer; nothing measured."""
    return [StepLabel(hard=Hard.GOOD, source=LabelSource.WITNESS) for _ in range(state.num_steps)]


def every_prefix(state: SolutionState) -> list[int]:
    return [k for k in range(1, state.num_steps) if k not in state.rollouts]


def measured_labels(state: SolutionState) -> list[StepLabel]:
    """Rollout labels of every prefix but the whole, then the final answer's."""
    labels = [label_from_rollouts(state.rollouts[k], state.n) for k in range(1, state.num_steps)]
    return [*labels, label_final_step(state)]


class PerStep:
    """The paper's and the recipe's estimation: N rollouts from every prefix but the whole."""

    name = "per_step"

    def __init__(self, witness: bool = True) -> None:
        self.witness = witness

    def next_prefixes(self, state: SolutionState) -> list[int]:
        if self.witness and state.final_answer_correct:
            return []
        return every_prefix(state)

    def decide(self, state: SolutionState) -> list[StepLabel]:
        if self.witness and state.final_answer_correct:
            return witness_labels(state)
        return measured_labels(state)


@dataclass(frozen=True)
class Bracket:
    """Where a first-error search stands: prefix `good` reaches the answer, prefix `bad` does not
    (0 and L before any probe); `unknown` is the probe with no valid rollout that ended it."""

    good: int
    bad: int
    unknown: int | None = None

    @property
    def probe(self) -> int | None:
        """The prefix to roll out next, None when the search is over."""
        if self.unknown is not None or self.bad - self.good <= 1:
            return None
        return (self.good + self.bad) // 2

    def hard(self, k: int) -> Hard:
        return Hard.GOOD if k <= self.good else Hard.BAD if k >= self.bad else Hard.UNKNOWN


def search_bracket(state: SolutionState) -> Bracket:
    """Replay the binary search over the prefixes answered so far. Stateless, so one strategy
    object serves every solution, and the same rollouts always give the same bracket."""
    bracket = Bracket(good=0, bad=state.num_steps)
    while (probe := bracket.probe) is not None and probe in state.rollouts:
        hard = label_from_rollouts(state.rollouts[probe], state.n).hard
        if hard is Hard.GOOD:
            bracket = Bracket(good=probe, bad=bracket.bad)
        elif hard is Hard.BAD:
            bracket = Bracket(good=bracket.good, bad=probe)
        else:
            bracket = Bracket(good=bracket.good, bad=bracket.bad, unknown=probe)
    return bracket


def searched_labels(state: SolutionState, bracket: Bracket) -> list[StepLabel]:
    """Bracketed labels; measured values where a prefix was rolled out, none invented elsewhere."""
    labels = []
    for k in range(1, state.num_steps):
        if k in state.rollouts:
            labels.append(label_from_rollouts(state.rollouts[k], state.n))
        else:
            labels.append(StepLabel(hard=bracket.hard(k), source=LabelSource.SEARCH))
    return [*labels, label_final_step(state)]


class FirstError:
    """Binary search for the first bad step of each wrong candidate (see the module docstring)."""

    name = "first_error"

    def __init__(self, witness: bool = True) -> None:
        self.witness = witness

    def next_prefixes(self, state: SolutionState) -> list[int]:
        if state.final_answer_correct:
            return [] if self.witness else every_prefix(state)
        probe = search_bracket(state).probe
        return [] if probe is None else [probe]

    def decide(self, state: SolutionState) -> list[StepLabel]:
        if state.final_answer_correct:
            return witness_labels(state) if self.witness else measured_labels(state)
        return searched_labels(state, search_bracket(state))


STRATEGIES: dict[str, type[PerStep] | type[FirstError]] = {
    "per_step": PerStep,
    "first_error": FirstError,
}


def make_strategy(name: str, witness: bool = True) -> Strategy:
    try:
        return STRATEGIES[name](witness=witness)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None


class Labeller:
    def __init__(self, targets: Sequence[LabelTarget], n: int, strategy: Strategy) -> None:
        if n < 1:
            raise ValueError(f"N must be at least 1, got {n}")
        self.n = n
        self.strategy = strategy
        self.states: list[SolutionState] = []
        self.depths: list[int] = []  # times each candidate was given prefixes to ask
        self._asked: set[PrefixQuery] = set()
        self._open: set[PrefixQuery] = set()
        self._waiting: list[int] = []  # open prefixes per candidate
        self._extend(targets)

    def _extend(self, targets: Sequence[LabelTarget]) -> range:
        """Take on more candidates; their indices."""
        start = len(self.states)
        self.states += [SolutionState(target=t, n=self.n) for t in targets]
        self.depths += [0] * len(targets)
        self._waiting += [0] * len(targets)
        return range(start, len(self.states))

    def add(self, targets: Sequence[LabelTarget]) -> list[PrefixQuery]:
        """More candidates to label (a question whose candidates have just arrived), and
        their first prefixes to ask."""
        return [query for index in self._extend(targets) for query in self.pending_for(index)]

    @property
    def rounds(self) -> int:
        """The longest chain of sequential probes of any candidate (a search's depth): with a
        driver that waits for whole rounds, the number of rounds."""
        return max(self.depths, default=0)

    def pending(self) -> list[PrefixQuery]:
        """The next round: every prefix some strategy still needs, not yet answered."""
        queries = []
        for index, state in enumerate(self.states):
            asked = [PrefixQuery(index, k) for k in self.strategy.next_prefixes(state)]
            self._ask(index, asked)
            queries += asked
        return queries

    def pending_for(self, index: int) -> list[PrefixQuery]:
        """Candidate `index`'s next prefixes, once those it was given are answered: none while
        any is still open (a search's next probe depends on them all), none when it is done."""
        if self._waiting[index]:
            return []
        queries = [PrefixQuery(index, k) for k in self.strategy.next_prefixes(self.states[index])]
        self._ask(index, queries)
        return queries

    def _ask(self, index: int, queries: list[PrefixQuery]) -> None:
        new = [query for query in queries if query not in self._open]
        self._open.update(new)
        self._waiting[index] += len(new)
        self.depths[index] += bool(queries)

    @property
    def prefixes_evaluated(self) -> int:
        """(solution, prefix) pairs rolled out so far: N rollouts each."""
        return len(self._asked)

    def submit(
        self, query: PrefixQuery, rollouts: Sequence[Rollout], usage: Usage | None = None
    ) -> None:
        if query in self._asked:
            raise ValueError(f"prefix {query} was already answered")
        state = self.states[query.target]
        if not 1 <= query.prefix_len < state.num_steps:
            raise ValueError(f"prefix length {query.prefix_len} outside 1..{state.num_steps - 1}")
        if query not in self._open:
            # An unasked prefix could contradict a search's bracket: only answers are taken.
            raise ValueError(f"prefix {query} was not asked for")
        self._open.discard(query)
        self._waiting[query.target] -= 1
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
