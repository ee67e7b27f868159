"""Prefect: the mshep flow. One task per stage and shard, each thin: read a shard, call the
library, write the shard, return a small `ShardRef`.

    load → (golden ‖ generate) per shard → complete per shard → format + write

Task arguments are the config, paths and ids; backends are built inside the task that uses them,
so nothing closes over a client and any task runner (threads, Ray) can run them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.filesystems import RemoteFileSystem
from prefect.futures import PrefectFuture

from mshep.backends import make_backend
from mshep.config import (
    CompleterConfig,
    HttpBackendConfig,
    ModelStage,
    RunConfig,
    VllmBackendConfig,
)
from mshep.errors import MshepError
from mshep.formats import format_rows
from mshep.io import (
    digest,
    exists,
    load_problems,
    read_records,
    records_text,
    write_dataset,
    write_json,
    write_records,
)
from mshep.labelling import LabelTarget
from mshep.pipeline import generate_solutions, label_solutions
from mshep.records import Failure, KeyedSolution, LabelledSolution, Problem, Solution
from mshep.summary import RunSummary, ShardRef, count_reasons, label_counts, stage_summary

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


def shard_path(config: RunConfig, stage: str, problems: ShardRef) -> str:
    """Where a stage writes a shard: keyed by the stage's settings and the shard's questions, so
    runs with other settings or other data never overwrite what this one may resume from."""
    key = stage_keys(config)[stage]
    return (
        f"{work_dir(config)}/{stage}-{key}/shard-{problems.shard:05d}-{problems.digest[:12]}.jsonl"
    )


@task(name="load-questions")
def load_task(config: RunConfig) -> tuple[int, list[ShardRef], list[Failure]]:
    """Not cached: the input is read fresh each run; shards whose questions did not change keep
    their paths and digests, so their downstream tasks hit the cache."""
    loaded = load_problems(config.dataset, need_reference=config.golden.source == "reference")
    size = config.execution.shard_size
    refs = []
    for shard, start in enumerate(range(0, len(loaded.problems), size)):
        text = records_text(loaded.problems[start : start + size])
        key, sha = stage_keys(config)["load"], digest(text)
        path = f"{work_dir(config)}/load-{key}/shard-{shard:05d}-{sha[:12]}.jsonl"
        write_records(path, text)
        count = len(loaded.problems[start : start + size])
        refs.append(ShardRef(stage="load", shard=shard, path=path, digest=sha, problems=count))
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
        failures=unlabelled,
        usage=result.usage,
        rounds=result.rounds,
    )


@task(name="write-outputs")
def write_task(config: RunConfig, complete_refs: list[ShardRef]) -> dict[str, Any]:
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
    return written


def result_storage(config: RunConfig) -> Path | str:
    """Where the stage tasks' results (small `ShardRef`s, keyed by cache key) persist: next to
    the shard data by default, so a run resumes wherever its output lives. An s3:// prefix is
    saved as a Prefect block holding only the path (Prefect wants remote storage as a saved
    block); endpoint and credentials stay in the environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, ...), or name a block of your own in `execution.result_storage_block`."""
    if config.execution.result_storage_block:
        return config.execution.result_storage_block  # Prefect loads the saved block by slug
    base = config.execution.result_storage or f"{work_dir(config)}/results"
    if "://" in base and not base.startswith("file://"):
        name = f"mshep-results-{hashlib.sha256(base.encode()).hexdigest()[:12]}"
        RemoteFileSystem(basepath=base).save(name, overwrite=True)
        return f"remote-file-system/{name}"
    return Path(base.removeprefix("file://")).resolve()


StageFutures = dict[str, list[PrefectFuture[ShardRef]]]


class _Submitter:
    """Submits one stage task per shard with the run's cache settings. A task whose output file
    is gone (or every task, with `execution.cache` off) refreshes its cache entry: it runs again
    and its new result replaces the old one, rather than a cached reference to missing data."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.storage = result_storage(config)
        self.refreshed = 0

    def options(self, stage: Task[..., ShardRef], out: str) -> Task[..., ShardRef]:
        refresh = not self.config.execution.cache or not exists(out)
        self.refreshed += refresh
        return stage.with_options(result_storage=self.storage, refresh_cache=refresh)

    def submit(self, shards: list[ShardRef]) -> StageFutures:
        """golden ‖ generate per shard, then complete; Prefect resolves the futures passed on."""
        config = self.config
        futures: StageFutures = {"golden": [], "generate": [], "complete": []}
        for ref in shards:
            golden = None
            if config.golden.source == "model":
                out = shard_path(config, "golden", ref)
                golden = self.options(generate_task, out).submit(
                    "golden",
                    settings(config.golden),
                    1,
                    ref,
                    out,
                    config.backend_for(config.golden),
                )
                futures["golden"].append(golden)
            out = shard_path(config, "generate", ref)
            generated = self.options(generate_task, out).submit(
                "generate",
                settings(config.generator),
                config.generator.M,
                ref,
                out,
                config.backend_for(config.generator),
            )
            futures["generate"].append(generated)
            out = shard_path(config, "complete", ref)
            backend = config.backend_for(config.completer)
            # Futures as arguments: Prefect waits for them and passes their results.
            completed = self.options(complete_task, out).submit(
                settings(config.completer), ref, golden, generated, out, backend
            )
            futures["complete"].append(completed)
        return futures


def reused(futures: list[PrefectFuture[ShardRef]]) -> int:
    """Shards whose result came from the cache of an earlier run."""
    return sum(1 for future in futures if future.state.name == "Cached")


def _summarise(
    rows_in: int, rejected: list[Failure], refs: dict[str, list[ShardRef]], written: dict[str, Any]
) -> RunSummary:
    unlabelled = [f for ref in refs["complete"] for f in ref.failures]
    summary = RunSummary(
        rows_in=rows_in,
        rows_labelled=written["problems_labelled"],
        rows_not_labelled=count_reasons([*rejected, *unlabelled]),
        solutions_generated=sum(ref.items for ref in refs["generate"]),
        solutions_labelled=sum(ref.items for ref in refs["complete"]),
        labels=written["labels"],
        rows_out=written["rows_out"],
        rows_dropped=written["rows_dropped"],
        outputs=written["outputs"],
        labelling_rounds=max((ref.rounds for ref in refs["complete"]), default=0),
        stages={name: stage_summary(stage_refs) for name, stage_refs in refs.items() if stage_refs},
    )
    accounted = summary.rows_labelled + sum(summary.rows_not_labelled.values())
    if accounted != rows_in:  # a bug, not bad input: every row must land somewhere
        raise RuntimeError(f"accounting error: {rows_in} rows in, {accounted} accounted for")
    return summary


@flow(name="mshep", log_prints=False)
def mshep_flow(config: RunConfig) -> dict[str, Any]:
    """Math-Shepherd PRM dataset: golden answers, M candidates, N rollouts per step, labels."""
    logger = get_run_logger()
    started = time.monotonic()
    rows_in, shards, rejected = load_task(config)
    for failure in rejected:
        logger.warning("row not used: %s (%s)", failure.reason, failure.detail)
    logger.info("%d rows in, %d usable, %d shards", rows_in, rows_in - len(rejected), len(shards))
    futures = _Submitter(config).submit(shards)
    refs = {name: [f.result() for f in stage] for name, stage in futures.items()}
    for name, stage in futures.items():
        if stage and (hits := reused(stage)):
            logger.info("%s: %d of %d shards reused from an earlier run", name, hits, len(stage))
    written = write_task(config, refs["complete"])
    summary = _summarise(rows_in, rejected, refs, written)
    summary.wall_time_s = round(time.monotonic() - started, 3)
    write_json(f"{config.output.path.rstrip('/')}/summary.json", summary.model_dump())
    for line in summary.lines():
        logger.info(line)
    if summary.rows_labelled == 0:
        reasons = "; ".join(f"{n} × {why}" for why, n in summary.rows_not_labelled.items())
        raise MshepError(f"no row was labelled ({reasons}); nothing was written")
    return summary.model_dump()


def build_task_runner(config: RunConfig) -> Any:
    """Threads by default; a Ray cluster (prefect-ray) when `execution.task_runner` is 'ray'."""
    if config.execution.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(
            address=config.execution.ray_address, init_kwargs={"include_dashboard": False}
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.execution.workers)


def run_flow(config: RunConfig) -> dict[str, Any]:
    """The Python entry point: run the flow with the task runner the config asks for."""
    return mshep_flow.with_options(task_runner=build_task_runner(config))(config)
