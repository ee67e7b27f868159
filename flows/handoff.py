"""A shard's candidates handed from its generate task to its complete task, question by
question, while both run in the flow's process (threads): a question's labelling starts as soon
as its own candidates are back, not when the whole shard is. The shard file stays the one
record: when the generate task ends, the complete task checks every question it was handed
against the file, and takes from the file any it was not handed (a reused or cached shard hands
nothing). The flow opens a handoff when it starts a shard's generate task, closes it with the
task's end, and drops it when the complete task ends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from mshep.completion import label_targets
from mshep.errors import MshepError
from mshep.io import read_records
from mshep.labelling import LabelTarget
from mshep.records import Failure, KeyedSolution, Problem, Solution
from mshep.shards import ShardRef


class InputFailed(MshepError):
    """The generate task a completion was labelling from failed (its own error says why)."""


class Handoff:
    """One shard's questions as they are generated, then how its generate task ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._questions: list[tuple[str, list[Solution]]] = []
        self._end: ShardRef | BaseException | None = None
        self._wakes: list[Callable[[], None]] = []

    def put(self, problem_id: str, solutions: Sequence[Solution]) -> None:
        """A question's candidates, final (called by the generate task, from any thread)."""
        with self._lock:
            self._questions.append((problem_id, list(solutions)))
            wakes = list(self._wakes)
        for wake in wakes:
            wake()

    def close(self, end: ShardRef | BaseException) -> None:
        """The generate task ended: its shard, or why it failed. Only the first end counts."""
        with self._lock:
            if self._end is not None:
                return
            self._end = end
            wakes = list(self._wakes)
        for wake in wakes:
            wake()

    def wait(self) -> None:
        """Until a question is handed over or the generate task has ended."""
        arrived = threading.Event()
        self._watch(arrived.set)
        arrived.wait()

    def _watch(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._wakes.append(wake)
            now = bool(self._questions) or self._end is not None
        if now:
            wake()

    def _since(
        self, seen: int
    ) -> tuple[list[tuple[str, list[Solution]]], ShardRef | BaseException | None]:
        with self._lock:
            return self._questions[seen:], self._end


class _Registry:
    """The handoffs of the flow's process, by the generate shard's output path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Handoff] = {}

    def open(self, path: str) -> Handoff:
        """A new handoff for `path` (one left by an earlier run in this process is ended)."""
        with self._lock:
            old, self._open[path] = self._open.get(path), Handoff()
            new = self._open[path]
        if old is not None:
            old.close(InputFailed("a newer run is generating this shard"))
        return new

    def get(self, path: str) -> Handoff | None:
        with self._lock:
            return self._open.get(path)

    def drop(self, path: str) -> None:
        with self._lock:
            self._open.pop(path, None)


HANDOFFS = _Registry()


def handoff_for(path: str) -> Handoff | None:
    """The open handoff of the generate shard at `path`, if any. Stage tasks call this rather
    than use `HANDOFFS`: a task function is pickled by value for Ray, with the module objects
    it names, and a registry holds a lock."""
    return HANDOFFS.get(path)


class Candidates:
    """`mshep.completion.Arriving` over a handoff: each question handed over becomes its
    candidates to label (or one failure: no golden answer, no candidate read); when the
    generate task has ended, every question it handed over is checked against its shard file,
    and those it did not hand over are read from the file."""

    def __init__(self, handoff: Handoff, problems: Sequence[Problem], golden: dict[str, str]):
        self.handoff = handoff
        self.problems = {problem.id: problem for problem in problems}
        self.order = list(problems)
        self.golden = golden
        self.seen = 0  # questions taken from the handoff
        self.handed: dict[str, list[Solution]] = {}
        self.ended = False

    def wake_with(self, wake: Callable[[], None]) -> None:
        self.handoff._watch(wake)

    def take(self) -> tuple[list[LabelTarget], list[Failure], bool]:
        if self.ended:
            return [], [], True
        questions, end = self.handoff._since(self.seen)
        self.seen += len(questions)
        new: list[tuple[str, list[Solution]]] = []
        for problem_id, solutions in questions:
            if problem_id not in self.problems:
                raise RuntimeError(
                    f"generate task handed over a question not in its shard: {problem_id!r}"
                )
            if problem_id not in self.handed:
                self.handed[problem_id] = solutions
                new.append((problem_id, solutions))
        if isinstance(end, BaseException):
            raise InputFailed(f"its generate task failed: {end}")
        if end is not None:
            self.ended = True
            new += self._rest(end)
        targets, failures = self._targets(new)
        return targets, failures, self.ended

    def _rest(self, end: ShardRef) -> list[tuple[str, list[Solution]]]:
        """Check what was handed over against the shard file; the questions not handed over."""
        written: dict[str, list[Solution]] = {problem_id: [] for problem_id in self.problems}
        for keyed in read_records(end.path, KeyedSolution):
            written[keyed.problem_id].append(keyed.solution)
        for problem_id, solutions in self.handed.items():
            if _dumped(solutions) != _dumped(written[problem_id]):
                raise RuntimeError(
                    f"question {problem_id!r}: the candidates handed over differ from "
                    f"those written to {end.path}"
                )
        return [(p.id, written[p.id]) for p in self.order if p.id not in self.handed]

    def _targets(
        self, questions: list[tuple[str, list[Solution]]]
    ) -> tuple[list[LabelTarget], list[Failure]]:
        problems = [self.problems[problem_id] for problem_id, _ in questions]
        keyed = [
            KeyedSolution(problem_id=problem_id, solution=solution)
            for problem_id, solutions in questions
            for solution in solutions
        ]
        return label_targets(problems, self.golden, keyed)


def _dumped(solutions: Sequence[Solution]) -> list[object]:
    return [solution.model_dump(mode="json") for solution in solutions]
