"""Pure, given a backend. The golden and generate stages over one shard: M solutions per
question by n-sampling, every request of the shard in flight at once, replies read into
solutions, each question handed on as soon as it is done; unreadable replies asked again
(bounded), every other failure recorded with its reason, never dropped silently."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mshep.backends.base import Backend, Completion, GenerationRequest, GenerationResult
from mshep.batches import derive_seed, split_usage, stream_backend
from mshep.config import ModelStage
from mshep.failures import RequestTally
from mshep.parsing import ParseFailure, parse_json_solution, parse_solution
from mshep.prompts import SOLUTION_SCHEMA, generator_messages, response_format
from mshep.records import Failure, Problem, Solution, Usage


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


QuestionDone = Callable[[str, list[Solution]], None]
"""Called with a question's id and its candidates (by index) once no request of it is left."""


def generate_solutions(
    backend: Backend,
    problems: Sequence[Problem],
    stage: ModelStage,
    m: int,
    stage_name: str,
    on_question: QuestionDone | None = None,
) -> Generated:
    """M solutions per problem through n-sampling: one request per problem, all sent at once
    (in the background of a shared bound: labelling goes first); a problem's replies that could
    not be read are asked again as soon as they are back, up to `stage.resample` times (a slot
    still unread at the end keeps the failure of its first reply). Each problem is handed to
    `on_question` as soon as it is done, so its labelling need not wait for the shard's other
    problems. A backend that does not stream asks in rounds; the solutions are the same, since
    each problem's requests and their seeds do not depend on the others'."""
    stage_name = str(stage_name)  # a `Stage` member's value: it enters the request seeds
    out = Generated(solutions={p.id: [] for p in problems})
    unread: dict[str, dict[int, Failure]] = {p.id: {} for p in problems}  # unreadable slots
    slots = {p.id: list(range(m)) for p in problems}  # candidate indices still to fill
    failures: dict[str, list[Failure]] = {p.id: [] for p in problems}
    sent: dict[int, tuple[Problem, int]] = {}  # by id(request): its problem and attempt

    def ask(problem: Problem, attempt: int) -> GenerationRequest:
        request = _solution_request(problem, stage, len(slots[problem.id]), stage_name, attempt)
        sent[id(request)] = (problem, attempt)
        out.resampled += request.n if attempt else 0
        return request

    def answered(request: GenerationRequest, result: GenerationResult) -> list[GenerationRequest]:
        problem, attempt = sent.pop(id(request))
        asked = slots[problem.id]
        unreadable = _read_candidates(
            out, failures[problem.id], problem, result, asked, stage, stage_name, attempt
        )
        answered = asked[: len(result.completions)]
        for slot in answered:
            if slot in unreadable:
                unread[problem.id].setdefault(slot, unreadable[slot])
            else:
                unread[problem.id].pop(slot, None)
        # A re-sample that did not come back leaves its slot unread, to ask once more.
        slots[problem.id] = [s for s in asked if s in unreadable or (attempt and s not in answered)]
        if slots[problem.id] and attempt < stage.resample:
            return [ask(problem, attempt + 1)]
        failures[problem.id] += unread[problem.id].values()
        out.solutions[problem.id].sort(key=lambda solution: solution.index)
        if on_question is not None:
            on_question(problem.id, out.solutions[problem.id])
        return []

    first = [ask(problem, 0) for problem in problems]
    stream_backend(backend, first, answered, out.tally, background=True)
    out.failures = [failure for problem in problems for failure in failures[problem.id]]
    return out


def _read_candidates(
    out: Generated,
    failures: list[Failure],
    problem: Problem,
    result: GenerationResult,
    slots: list[int],
    stage: ModelStage,
    stage_name: str,
    attempt: int,
) -> dict[int, Failure]:
    """Read one request's replies into the candidate slots they fill. Returns the slots whose
    reply was text that could not be read (worth asking again), with that failure; other
    failures (request failed, cut at max_tokens, missing replies) go to `failures`."""
    out.usage += result.usage

    def failure(reason: str, detail: str) -> Failure:
        return Failure(stage=stage_name, reason=reason, detail=detail, problem_id=problem.id)

    if len(result.completions) < len(slots) and not result.error and not attempt:
        detail = f"{len(result.completions)} of {len(slots)} replies came back"
        failures.append(failure("missing replies", detail))
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
            failures.append(failure(read.reason, result.error or read.text[:200]))
    return unreadable
