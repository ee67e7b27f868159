"""Pure, given a backend. The stages as functions over one shard: build every request, send them
to the backend in one call (one per labelling round), read the replies into records.

Nothing is dropped silently: a request or reply that yields no solution, and a question the
difficulty filter leaves out, becomes a `Failure` with its reason, and the caller's summary
counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mshep.answers import answers_match
from mshep.backends.base import Backend, Completion, GenerationRequest, GenerationResult
from mshep.batches import call_backend, derive_seed, split_usage
from mshep.config import CompleterConfig, ModelStage
from mshep.failures import RequestTally
from mshep.labelling import Labeller, LabelTarget, PrefixQuery, make_strategy
from mshep.parsing import ParseFailure, extract_final_answer, parse_json_solution, parse_solution
from mshep.prompts import (
    ROLLOUT_SCHEMA,
    SOLUTION_SCHEMA,
    completer_messages,
    generator_messages,
    response_format,
)
from mshep.records import (
    Failure,
    LabelledSolution,
    Problem,
    Rollout,
    RolloutStatus,
    Solution,
    Stage,
    Usage,
)


def read_solution(
    completion: Completion, structured: bool, model: str, index: int, usage: Usage
) -> Solution | ParseFailure:
    if completion.finish_reason == "error":
        return ParseFailure(reason="request failed")
    if completion.finish_reason == "length":
        return ParseFailure(reason="reply cut at max_tokens", text=completion.text or "")
    parsed = parse_json_solution(completion.text) if structured else parse_solution(completion.text)
    if isinstance(parsed, ParseFailure):
        return parsed
    return Solution(steps=parsed.steps, answer=parsed.answer, model=model, index=index, usage=usage)


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
class Generated:
    solutions: dict[str, list[Solution]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    tally: RequestTally = field(default_factory=RequestTally)
    resampled: int = 0  # replies asked again because the first could not be read


def _solution_request(
    problem: Problem, stage: ModelStage, n: int, stage_name: str, attempt: int
) -> GenerationRequest:
    sampling = stage.sampling
    again = ("resample", attempt) if attempt else ()
    return GenerationRequest(
        messages=generator_messages(problem.question, stage.prompts, stage.structured_output),
        n=n,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=derive_seed(sampling.seed, problem.id, stage_name, *again),
        response_format=response_format(SOLUTION_SCHEMA) if stage.structured_output else None,
        model=stage.model,
        tag=f"{stage_name}/{problem.id}",
    )


def generate_solutions(
    backend: Backend, problems: Sequence[Problem], stage: ModelStage, m: int, stage_name: str
) -> Generated:
    """M solutions per problem through n-sampling: one request per problem, all in one call;
    then, up to `stage.resample` times, one more call for the replies that could not be read
    (a slot still unread at the end keeps the failure of its first reply)."""
    stage_name = str(stage_name)  # a `Stage` member's value: it enters the request seeds
    out = Generated(solutions={p.id: [] for p in problems})
    unread: dict[tuple[str, int], Failure] = {}  # slots whose reply could not be read
    slots = {p.id: list(range(m)) for p in problems}  # candidate indices still to fill
    for attempt in range(stage.resample + 1):
        asking = [p for p in problems if slots[p.id]]
        requests = [
            _solution_request(p, stage, len(slots[p.id]), stage_name, attempt) for p in asking
        ]
        out.resampled += sum(r.n for r in requests) if attempt else 0
        for problem, result in zip(asking, call_backend(backend, requests, out.tally), strict=True):
            asked = slots[problem.id]
            unreadable = _read_candidates(out, problem, result, asked, stage, stage_name, attempt)
            answered = asked[: len(result.completions)]
            for slot in answered:
                if slot in unreadable:
                    unread.setdefault((problem.id, slot), unreadable[slot])
                else:
                    unread.pop((problem.id, slot), None)
            # A re-sample that did not come back leaves its slot unread, to ask once more.
            slots[problem.id] = [
                s for s in asked if s in unreadable or (attempt and s not in answered)
            ]
    out.failures += unread.values()
    for solutions in out.solutions.values():
        solutions.sort(key=lambda solution: solution.index)
    return out


def _read_candidates(
    out: Generated,
    problem: Problem,
    result: GenerationResult,
    slots: list[int],
    stage: ModelStage,
    stage_name: str,
    attempt: int,
) -> dict[int, Failure]:
    """Read one request's replies into the candidate slots they fill. Returns the slots whose
    reply was text that could not be read (worth asking again), with that failure; other
    failures (request failed, cut at max_tokens, missing replies) are recorded here."""
    out.usage += result.usage

    def failure(reason: str, detail: str) -> Failure:
        return Failure(stage=stage_name, reason=reason, detail=detail, problem_id=problem.id)

    if len(result.completions) < len(slots) and not result.error and not attempt:
        detail = f"{len(result.completions)} of {len(slots)} replies came back"
        out.failures.append(failure("missing replies", detail))
    unreadable = {}
    usages = split_usage(result.usage, result.completions)
    for index, completion, usage in zip(slots, result.completions, usages, strict=False):
        model = result.model or stage.model
        read = read_solution(completion, stage.structured_output, model, index, usage)
        if isinstance(read, Solution):
            out.solutions[problem.id].append(read)
        elif completion.finish_reason == "stop":
            unreadable[index] = failure(read.reason, read.text[:200])
        else:
            out.failures.append(failure(read.reason, result.error or read.text[:200]))
    return unreadable


@dataclass
class Labelled:
    solutions: list[LabelledSolution]
    usage: Usage
    rounds: int
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


def _roll_out(
    backend: Backend,
    targets: Sequence[LabelTarget],
    queries: list[PrefixQuery],
    cfg: CompleterConfig,
    out: Labelled,
) -> list[_Answered]:
    """One round: N rollouts per query in one call; then, up to `cfg.resample` times, one call
    for the rollouts whose reply could not be read, each replaced by its new sample."""
    answered: list[_Answered] = []
    for attempt in range(cfg.resample + 1):
        asking = [i for i, a in enumerate(answered) if a.unreadable()] if attempt else []
        if attempt and not asking:
            break
        indices = asking if attempt else list(range(len(queries)))
        requests = [
            _rollout_request(
                targets[queries[i].target], queries[i], cfg,
                len(answered[i].unreadable()) if attempt else cfg.N, attempt,
            )
            for i in indices
        ]  # fmt: skip
        out.resampled += sum(r.n for r in requests) if attempt else 0
        for i, result in zip(indices, call_backend(backend, requests, out.tally), strict=True):
            golden = targets[queries[i].target].golden_answer
            rollouts = [read_rollout(c, golden, cfg.structured_output) for c in result.completions]
            if not attempt:
                answered.append(_Answered(rollouts, result.usage))
                continue
            for slot, rollout in zip(answered[i].unreadable(), rollouts, strict=False):
                answered[i].rollouts[slot] = rollout
            answered[i].usage += result.usage
    return answered


def label_solutions(
    backend: Backend, targets: Sequence[LabelTarget], cfg: CompleterConfig
) -> Labelled:
    """Drive the labeller round by round; each round is one backend call with every rollout of
    the shard (plus one per re-sample), so a first-error search over many candidates costs
    ~ceil(log2 L) calls."""
    out = Labelled(solutions=[], usage=Usage(), rounds=0)
    if cfg.difficulty_filter:
        targets, out.failures = filter_by_difficulty(targets)
    labeller = Labeller(targets, cfg.N, make_strategy(cfg.strategy, witness=cfg.witness))
    while queries := labeller.pending():
        for query, answered in zip(
            queries, _roll_out(backend, targets, queries, cfg, out), strict=True
        ):
            labeller.submit(query, answered.rollouts, answered.usage)
            out.usage += answered.usage
    out.solutions = labeller.results(cfg.model)
    out.rounds = labeller.rounds
    out.prefixes = labeller.prefixes_evaluated
    return out
