"""Pure, given a backend. The stages as functions over one shard: build every request, send them
to the backend in one call (one per labelling round), read the replies into records.

Nothing is dropped silently: a request or reply that yields no solution, and a question the
difficulty filter leaves out, becomes a `Failure` with its reason, and the caller's summary
counts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from mshep.answers import answers_match
from mshep.backends.base import Backend, Completion, GenerationRequest, GenerationResult
from mshep.config import CompleterConfig, ModelStage
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


def derive_seed(base: int, *parts: object) -> int:
    """A request seed from (base seed, question id, stage, solution, prefix): stable across runs."""
    digest = hashlib.sha256(repr((base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _spread(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer total in proportion to weights, the parts summing exactly to the total."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    shares = [total * w / weight_sum for w in weights]
    parts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def split_usage(usage: Usage, completions: Sequence[Completion]) -> list[Usage]:
    """One request's usage shared among its n completions (the recipe gave every row the total):
    the prompt evenly, completion tokens by each completion's own count or, when the server only
    reports the total, by its length."""
    count = len(completions)
    known = [c.completion_tokens for c in completions]
    if all(k is not None for k in known) and sum(k or 0 for k in known) == usage.completion_tokens:
        completion = [k or 0 for k in known]
    else:
        completion = _spread(usage.completion_tokens, [len(c.text or "") for c in completions])
    prompt = _spread(usage.prompt_tokens, [1] * count)
    requests = _spread(usage.requests, [1] * count)
    return [
        Usage(requests=r, prompt_tokens=p, completion_tokens=c)
        for r, p, c in zip(requests, prompt, completion, strict=True)
    ]


def _call(backend: Backend, requests: list[GenerationRequest]) -> list[GenerationResult]:
    results = backend.generate(requests) if requests else []
    if len(results) != len(requests):
        raise RuntimeError(
            f"backend {backend.name!r} returned {len(results)} results for {len(requests)} requests"
        )
    return results


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


def generate_solutions(
    backend: Backend, problems: Sequence[Problem], stage: ModelStage, m: int, stage_name: str
) -> Generated:
    """M solutions per problem through n-sampling: one request per problem, all in one call."""
    stage_name = str(stage_name)  # a `Stage` member's value: it enters the request seeds
    sampling = stage.sampling
    fmt = response_format(SOLUTION_SCHEMA) if stage.structured_output else None
    requests = [
        GenerationRequest(
            messages=generator_messages(p.question, stage.prompts, stage.structured_output),
            n=m,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=sampling.stop,
            seed=derive_seed(sampling.seed, p.id, stage_name),
            response_format=fmt,
            model=stage.model,
            tag=f"{stage_name}/{p.id}",
        )
        for p in problems
    ]
    out = Generated()
    for problem, result in zip(problems, _call(backend, requests), strict=True):
        out.usage += result.usage
        out.solutions[problem.id] = []
        if len(result.completions) < m and not result.error:
            detail = f"{len(result.completions)} of {m} replies came back"
            out.failures.append(
                Failure(
                    stage=stage_name, reason="missing replies", detail=detail, problem_id=problem.id
                )
            )
        usages = split_usage(result.usage, result.completions)
        for index, (completion, usage) in enumerate(zip(result.completions, usages, strict=True)):
            read = read_solution(
                completion, stage.structured_output, result.model or stage.model, index, usage
            )
            if isinstance(read, ParseFailure):
                detail = result.error or read.text[:200]
                out.failures.append(
                    Failure(
                        stage=stage_name, reason=read.reason, detail=detail, problem_id=problem.id
                    )
                )
            else:
                out.solutions[problem.id].append(read)
    return out


@dataclass
class Labelled:
    solutions: list[LabelledSolution]
    usage: Usage
    rounds: int
    failures: list[Failure] = field(default_factory=list)  # one per question left out
    prefixes: int = 0  # (solution, prefix) pairs rolled out, N rollouts each


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
    target: LabelTarget, query: PrefixQuery, cfg: CompleterConfig
) -> GenerationRequest:
    sampling = cfg.sampling
    prefix = target.solution.steps[: query.prefix_len]
    seed_parts = (target.problem_id, Stage.COMPLETE.value, target.solution.index, query.prefix_len)
    return GenerationRequest(
        messages=completer_messages(target.question, prefix, cfg.prompts, cfg.structured_output),
        n=cfg.N,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=sampling.stop,
        seed=derive_seed(sampling.seed, *seed_parts),
        response_format=response_format(ROLLOUT_SCHEMA) if cfg.structured_output else None,
        model=cfg.model,
        tag=f"{Stage.COMPLETE.value}/{target.problem_id}/{target.solution.index}/{query.prefix_len}",
    )


def label_solutions(
    backend: Backend, targets: Sequence[LabelTarget], cfg: CompleterConfig
) -> Labelled:
    """Drive the labeller round by round; each round is one backend call with every rollout of
    the shard, so a first-error search over many candidates costs ~ceil(log2 L) calls."""
    failures: list[Failure] = []
    if cfg.difficulty_filter:
        targets, failures = filter_by_difficulty(targets)
    labeller = Labeller(targets, cfg.N, make_strategy(cfg.strategy, witness=cfg.witness))
    usage = Usage()
    while queries := labeller.pending():
        requests = [_rollout_request(targets[q.target], q, cfg) for q in queries]
        for query, result in zip(queries, _call(backend, requests), strict=True):
            golden = targets[query.target].golden_answer
            rollouts = [read_rollout(c, golden, cfg.structured_output) for c in result.completions]
            labeller.submit(query, rollouts, result.usage)
            usage += result.usage
    return Labelled(
        solutions=labeller.results(cfg.model),
        usage=usage,
        rounds=labeller.rounds,
        failures=failures,
        prefixes=labeller.prefixes_evaluated,
    )
