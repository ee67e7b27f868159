"""Prefect: the stage tasks. Each is thin: read a shard, call the library, write the shard,
return a small `ShardRef` (where the data is, its digest and counts, never the data).

Cache keys (DESIGN.md): a stage-and-shard task is keyed on its inputs and its source, not the run
id, so a new run (after a crash, or with other settings) reuses every shard whose inputs did not
change. Its inputs are what its output depends on: the stage's settings without the backend, the
input shards' references with their content digests, and its output path. Secrets never are.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from mshep.backends import make_backend
from mshep.config import (
    CompleterConfig,
    HttpBackendConfig,
    ModelStage,
    RunConfig,
    VllmBackendConfig,
)
from mshep.formats import format_rows
from mshep.hub import hub_token, push_dataset
from mshep.io import (
    digest,
    load_problems,
    read_records,
    records_text,
    write_dataset,
    write_records,
)
from mshep.labelling import LabelTarget
from mshep.pipeline import generate_solutions, label_solutions
from mshep.records import Failure, KeyedSolution, LabelledSolution, Problem, Solution
from mshep.summary import RunSummary, ShardRef, StageSummary, label_counts, quality_report

M = TypeVar("M", bound=ModelStage)


def fingerprint(*parts: Any) -> str:
    """A short, stable key of the settings a stage's output depends on."""
    text = "|".join(
        p.model_dump_json() if hasattr(p, "model_dump_json") else repr(p) for p in parts
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def settings(stage: M) -> M:
    """What a stage's output depends on: model, sampling, prompts, M/N, strategy. Not where or
    how the model is served (URL, concurrency, timeouts, retries, token variable): moving a run
    to another server, or raising its concurrency, keeps every finished shard."""
    return stage.model_copy(update={"backend": None})


def stage_keys(config: RunConfig) -> dict[str, str]:
    """Each stage's key covers its own settings and those of the stages it reads."""
    load = fingerprint(config.dataset, config.golden.source, config.execution.shard_size)
    golden = fingerprint(load, settings(config.golden))
    generate = fingerprint(load, settings(config.generator))
    reads = golden if config.golden.source == "model" else "reference"
    complete = fingerprint(reads, generate, settings(config.completer))
    return {"load": load, "golden": golden, "generate": generate, "complete": complete}


def work_dir(config: RunConfig) -> str:
    return f"{config.output.path.rstrip('/')}/.work"


def shard_path(config: RunConfig, stage: str, shard: int, questions_digest: str) -> str:
    """Where a stage writes a shard: keyed by the stage's settings and the shard's questions, so
    runs with other settings or other data never overwrite what this one may resume from."""
    key = stage_keys(config)[stage]
    return f"{work_dir(config)}/{stage}-{key}/shard-{shard:05d}-{questions_digest[:12]}.jsonl"


@task(name="load-questions")
def load_task(config: RunConfig) -> tuple[int, list[ShardRef], list[Failure]]:
    """Not cached: the input is read fresh each run; shards whose questions did not change keep
    their paths and digests, so their downstream tasks hit the cache."""
    loaded = load_problems(config.dataset, need_reference=config.golden.source == "reference")
    size = config.execution.shard_size
    refs = []
    for shard, start in enumerate(range(0, len(loaded.problems), size)):
        problems = loaded.problems[start : start + size]
        text = records_text(problems)
        sha = digest(text)
        path = shard_path(config, "load", shard, sha)
        write_records(path, text)
        refs.append(
            ShardRef(stage="load", shard=shard, path=path, digest=sha, problems=len(problems))
        )
    return loaded.rows_in, refs, loaded.rejected


# The cache key of a stage task: its inputs (settings, input shard references with their
# digests, output path) and its source; not the run id (DESIGN.md), not the backend.
SHARD_CACHE = (INPUTS - "backend") + TASK_SOURCE


@task(name="generate", cache_policy=SHARD_CACHE, persist_result=True)
def generate_task(
    name: str,
    stage: ModelStage,
    m: int,
    problems_ref: ShardRef,
    out: str,
    backend: HttpBackendConfig | VllmBackendConfig,
) -> ShardRef:
    """M solutions per question of one shard (M=1 for golden solutions)."""
    problems = read_records(problems_ref.path, Problem)
    with make_backend(backend, stage.model) as client:
        result = generate_solutions(client, problems, stage, m, name)
    keyed = [
        KeyedSolution(problem_id=p.id, solution=s) for p in problems for s in result.solutions[p.id]
    ]
    return ShardRef(
        stage=name,
        shard=problems_ref.shard,
        path=out,
        digest=write_records(out, keyed),
        problems=len(problems),
        items=len(keyed),
        failures=result.failures,
        usage=result.usage,
    )


def _golden_answers(problems: list[Problem], golden_ref: ShardRef | None) -> dict[str, str]:
    if golden_ref is None:
        return {p.id: p.reference_answer for p in problems if p.reference_answer is not None}
    return {k.problem_id: k.solution.answer for k in read_records(golden_ref.path, KeyedSolution)}


def _targets(
    problems: list[Problem], golden: dict[str, str], generated_ref: ShardRef
) -> tuple[list[LabelTarget], list[Failure]]:
    by_problem: dict[str, list[Solution]] = {}
    for keyed in read_records(generated_ref.path, KeyedSolution):
        by_problem.setdefault(keyed.problem_id, []).append(keyed.solution)
    targets, unlabelled = [], []
    for problem in problems:
        solutions = by_problem.get(problem.id, [])
        if problem.id not in golden:
            unlabelled.append(
                Failure(stage="golden", reason="no golden answer", problem_id=problem.id)
            )
        elif not solutions:
            unlabelled.append(
                Failure(
                    stage="generate",
                    reason="no candidate solution could be read",
                    problem_id=problem.id,
                )
            )
        else:
            targets += [
                LabelTarget(problem.id, problem.question, golden[problem.id], s) for s in solutions
            ]
    return targets, unlabelled


@task(name="complete", cache_policy=SHARD_CACHE, persist_result=True)
def complete_task(
    completer: CompleterConfig,
    problems_ref: ShardRef,
    golden_ref: ShardRef | None,
    generated_ref: ShardRef,
    out: str,
    backend: HttpBackendConfig | VllmBackendConfig,
) -> ShardRef:
    """Label every candidate of one shard, round by round, one backend call per round."""
    problems = read_records(problems_ref.path, Problem)
    targets, unlabelled = _targets(problems, _golden_answers(problems, golden_ref), generated_ref)
    with make_backend(backend, completer.model) as client:
        result = label_solutions(client, targets, completer)
    # `failures` here are per problem: exactly one for each problem left without a label.
    return ShardRef(
        stage="complete",
        shard=problems_ref.shard,
        path=out,
        digest=write_records(out, result.solutions),
        problems=len(problems),
        items=len(result.solutions),
        failures=[*unlabelled, *result.failures],
        usage=result.usage,
        rounds=result.rounds,
    )


@task(name="write-outputs")
def write_task(
    config: RunConfig, complete_refs: list[ShardRef], stages: dict[str, StageSummary]
) -> dict[str, Any]:
    """Every format from every completion shard, in shard order, and the quality report."""
    labelled = [item for ref in complete_refs for item in read_records(ref.path, LabelledSolution)]
    written: dict[str, Any] = {"outputs": {}, "rows_out": {}, "rows_dropped": {}}
    for name in config.output.formats:
        out = format_rows(labelled, name)
        directory = f"{config.output.path.rstrip('/')}/{name}"
        written["outputs"][name] = (
            write_dataset(out.rows, directory, config.output) if out.rows else []
        )
        written["rows_out"][name] = len(out.rows)
        written["rows_dropped"][name] = dict(out.dropped)
    written["labels"] = label_counts(labelled)
    written["problems_labelled"] = len({item.problem_id for item in labelled})
    written["quality"] = quality_report(labelled, stages)
    return written


@task(name="push-to-hub", retries=2, retry_delay_seconds=10)
def push_task(config: RunConfig, summary: RunSummary) -> str:
    """The token is read here, in the task, never passed to it: task inputs reach the API."""
    return push_dataset(config, summary, summary.outputs, hub_token(config.output))
