"""Pure, given a backend. The complete stage over one shard: which candidates to label (those
with a golden answer), rollouts from their step prefixes (every candidate's first prefixes sent
together, each candidate's next ones as soon as its last ones are back, unreadable rollouts asked
again), and the labeller's decisions. A question left without a label is one `Failure` with its
reason, never dropped silently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mshep.answers import answers_match
from mshep.backends.base import Backend, Completion, GenerationRequest, GenerationResult
from mshep.batches import derive_seed, stream_backend
from mshep.config import CompleterConfig
from mshep.failures import RequestTally
from mshep.labelling import Labeller, LabelTarget, PrefixQuery, make_strategy
from mshep.parsing import ParseFailure, extract_final_answer, parse_json_solution
from mshep.prompts import ROLLOUT_SCHEMA, completer_messages, response_format
from mshep.records import (
    Failure,
    KeyedSolution,
    LabelledSolution,
    Problem,
    Rollout,
    RolloutStatus,
    Solution,
    Stage,
    Usage,
)


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


@dataclass
class Labelled:
    solutions: list[LabelledSolution]
    usage: Usage
    rounds: int  # the longest chain of sequential probes of any candidate (Labeller.rounds)
    failures: list[Failure] = field(default_factory=list)  # one per question left out
    prefixes: int = 0  # (solution, prefix) pairs rolled out, N rollouts each
    tally: RequestTally = field(default_factory=RequestTally)
    resampled: int = 0  # rollouts asked again because the first reply could not be read


FILTER_STAGE = Stage.FILTER.value
ALL_RIGHT = "all candidates right"
ALL_WRONG = "all candidates wrong"


def filter_by_difficulty(targets: Sequence[LabelTarget]) -> tuple[list[LabelTarget], list[Failure]]:
    """Leave out questions whose candidates are all right or all wrong by final answer: they
    teach a PRM little and cost rollouts. A question with one candidate shows no contrast (with
    M=1 every question would go), so it is kept."""
    groups: dict[str, list[bool]] = {}
    for target in targets:
        right = answers_match(target.solution.answer, target.golden_answer)
        groups.setdefault(target.problem_id, []).append(right)
    failures = [
        Failure(
            stage=FILTER_STAGE,
            reason=ALL_RIGHT if all(rights) else ALL_WRONG,
            detail=f"{len(rights)} candidates",
            problem_id=problem_id,
        )
        for problem_id, rights in groups.items()
        if len(rights) > 1 and len(set(rights)) == 1
    ]
    dropped = {failure.problem_id for failure in failures}
    return [t for t in targets if t.problem_id not in dropped], failures


def _rollout_request(
    target: LabelTarget, query: PrefixQuery, cfg: CompleterConfig, n: int, attempt: int = 0
) -> GenerationRequest:
    sampling = cfg.sampling
    prefix = target.solution.steps[: query.prefix_len]
    seed_parts = (target.problem_id, Stage.COMPLETE.value, target.solution.index, query.prefix_len)
    again = ("resample", attempt) if attempt else ()
    return GenerationRequest(
        messages=completer_messages(target.question, prefix, cfg.prompts, cfg.structured_output),
        n=n,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=derive_seed(sampling.seed, *seed_parts, *again),
        response_format=response_format(ROLLOUT_SCHEMA) if cfg.structured_output else None,
        model=cfg.model,
        tag=f"{Stage.COMPLETE.value}/{target.problem_id}/{target.solution.index}/{query.prefix_len}",
    )


@dataclass
class _Answered:
    """The rollouts of one prefix query as they come back, attempt after attempt."""

    rollouts: list[Rollout]
    usage: Usage

    def unreadable(self) -> list[int]:
        return [i for i, r in enumerate(self.rollouts) if r.status is RolloutStatus.UNPARSEABLE]


class _Driver:
    """Turns each rollout request's result into what to ask next: the same query again for its
    unreadable rollouts (up to `cfg.resample` times, each a new sample replacing one that could
    not be read), else the query's rollouts go to the labeller and the candidate's next prefixes
    are asked. Called once per result, one at a time (`stream_backend`)."""

    def __init__(self, cfg: CompleterConfig, labeller: Labeller, out: Labelled) -> None:
        self.cfg = cfg
        self.labeller = labeller
        self.out = out
        self.sent: dict[int, tuple[GenerationRequest, PrefixQuery, int]] = {}  # by id(request)
        self.answers: dict[PrefixQuery, _Answered] = {}

    def ask(self, query: PrefixQuery, n: int, attempt: int = 0) -> GenerationRequest:
        target = self.labeller.states[query.target].target
        request = _rollout_request(target, query, self.cfg, n, attempt)
        self.sent[id(request)] = (request, query, attempt)
        return request

    def answered(
        self, request: GenerationRequest, result: GenerationResult
    ) -> list[GenerationRequest]:
        sent, query, attempt = self.sent.pop(id(request))
        assert sent is request
        golden = self.labeller.states[query.target].target.golden_answer
        rollouts = [read_rollout(c, golden, self.cfg.structured_output) for c in result.completions]
        if not attempt:
            answer = self.answers[query] = _Answered(rollouts, result.usage)
        else:
            answer = self.answers[query]
            for slot, rollout in zip(answer.unreadable(), rollouts, strict=False):
                answer.rollouts[slot] = rollout
            answer.usage += result.usage
        if attempt < self.cfg.resample and (unreadable := answer.unreadable()):
            self.out.resampled += len(unreadable)
            return [self.ask(query, len(unreadable), attempt + 1)]
        del self.answers[query]
        self.labeller.submit(query, answer.rollouts, answer.usage)
        self.out.usage += answer.usage
        return [
            self.ask(next_query, self.cfg.N)
            for next_query in self.labeller.pending_for(query.target)
        ]


class Arriving(Protocol):
    """Candidates that arrive while labelling runs: whole questions at a time (each question's
    candidates together, so the difficulty filter sees them all)."""

    def wake_with(self, wake: Callable[[], None]) -> None:
        """Call `wake()`, from any thread, when `take` has something new or no more will come."""
        ...

    def take(self) -> tuple[list[LabelTarget], list[Failure], bool]:
        """The candidates to label that arrived since the last call, one failure for each
        question that arrived with none to label, and whether no more will come."""
        ...


class _Feed:
    """`Arriving` candidates as a stream's `Incoming` requests: their first probes."""

    def __init__(self, arriving: Arriving, driver: _Driver) -> None:
        self.arriving, self.driver = arriving, driver

    def wake_with(self, wake: Callable[[], None]) -> None:
        self.arriving.wake_with(wake)

    def take(self) -> tuple[list[GenerationRequest], bool]:
        targets, failures, ended = self.arriving.take()
        out, cfg = self.driver.out, self.driver.cfg
        out.failures += failures
        if cfg.difficulty_filter:
            targets, left_out = filter_by_difficulty(targets)
            out.failures += left_out
        queries = self.driver.labeller.add(targets)
        return [self.driver.ask(query, cfg.N) for query in queries], ended


def label_solutions(
    backend: Backend,
    targets: Sequence[LabelTarget],
    cfg: CompleterConfig,
    arriving: Arriving | None = None,
) -> Labelled:
    """Drive the labeller candidate by candidate: every candidate's first prefixes go out
    together, and a candidate's next ones as soon as its own are back (with their re-samples),
    while the others' are still in flight, so no probe waits for the slowest of a round; the
    candidates of questions `arriving` later go out as they arrive. A backend that does not
    stream gets waves, one call each (`stream_backend`); the labels are the same, since each
    candidate's probes and their seeds do not depend on the others'. The solutions come back
    in the order their candidates were given or arrived. `rounds` is the longest chain of
    sequential probes of any candidate (~ceil(log2 L) for a first-error search)."""
    out = Labelled(solutions=[], usage=Usage(), rounds=0)
    if cfg.difficulty_filter:
        targets, out.failures = filter_by_difficulty(targets)
    labeller = Labeller(targets, cfg.N, make_strategy(cfg.strategy, witness=cfg.witness))
    driver = _Driver(cfg, labeller, out)
    first = [driver.ask(query, cfg.N) for query in labeller.pending()]
    feed = None if arriving is None else _Feed(arriving, driver)
    stream_backend(backend, first, driver.answered, out.tally, incoming=feed)
    out.solutions = labeller.results(cfg.model)
    out.rounds = labeller.rounds
    out.prefixes = labeller.prefixes_evaluated
    return out


def golden_answers(
    problems: Sequence[Problem], golden: Sequence[KeyedSolution] | None
) -> dict[str, str]:
    """Each question's golden answer: a strong model's solution, or the dataset's reference."""
    if golden is None:
        return {p.id: p.reference_answer for p in problems if p.reference_answer is not None}
    return {keyed.problem_id: keyed.solution.answer for keyed in golden}


def label_targets(
    problems: Sequence[Problem], golden: dict[str, str], generated: Sequence[KeyedSolution]
) -> tuple[list[LabelTarget], list[Failure]]:
    """The candidates to label, and one failure for each question that has none to label."""
    by_problem: dict[str, list[Solution]] = {}
    for keyed in generated:
        by_problem.setdefault(keyed.problem_id, []).append(keyed.solution)
    targets, unlabelled = [], []
    for problem in problems:
        solutions = by_problem.get(problem.id, [])
        if problem.id not in golden:
            why = "no golden answer"
            unlabelled.append(Failure(stage=Stage.GOLDEN, reason=why, problem_id=problem.id))
        elif not solutions:
            why = "no candidate solution could be read"
            unlabelled.append(Failure(stage=Stage.GENERATE, reason=why, problem_id=problem.id))
        else:
            targets += [
                LabelTarget(problem.id, problem.question, golden[problem.id], s) for s in solutions
            ]
    return targets, unlabelled
