"""Prefect: the mshep flow. One task per stage and shard, each thin: read a shard, call the
library, write the shard, return a small `ShardRef`.

    load → (golden ‖ generate) per shard → complete per shard → format + write

Task arguments are the config, paths and ids; backends are built inside the task that uses them,
so nothing closes over a client and any task runner (threads, Ray) can run them.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.futures import PrefectFuture

from mshep.backends import make_backend
from mshep.config import ModelStage, RunConfig
from mshep.errors import MshepError
from mshep.formats import format_rows
from mshep.io import load_problems, read_records, write_dataset, write_json, write_records
from mshep.labelling import LabelTarget
from mshep.pipeline import generate_solutions, label_solutions
from mshep.records import Failure, KeyedSolution, LabelledSolution, Problem, Solution
from mshep.summary import RunSummary, ShardRef, count_reasons, label_counts, stage_summary


def fingerprint(*parts: Any) -> str:
    """A short, stable key of the settings a stage's output depends on."""
    text = "|".join(
        p.model_dump_json() if hasattr(p, "model_dump_json") else repr(p) for p in parts
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_keys(config: RunConfig) -> dict[str, str]:
    """Each stage's key covers its own settings and those of the stages it reads."""
    load = fingerprint(config.dataset, config.golden.source, config.execution.shard_size)
    golden = fingerprint(load, config.golden, config.backend_for(config.golden))
    generate = fingerprint(load, config.generator, config.backend_for(config.generator))
    complete = fingerprint(golden, generate, config.completer, config.backend_for(config.completer))
    return {"load": load, "golden": golden, "generate": generate, "complete": complete}


def shard_path(config: RunConfig, stage: str, shard: int) -> str:
    key = stage_keys(config)[stage]
    return f"{config.output.path.rstrip('/')}/.work/{stage}-{key}/shard-{shard:05d}.jsonl"


@task(name="load-questions")
def load_task(config: RunConfig) -> tuple[int, list[ShardRef], list[Failure]]:
    loaded = load_problems(config.dataset, need_reference=config.golden.source == "reference")
    size = config.execution.shard_size
    refs = []
    for shard, start in enumerate(range(0, len(loaded.problems), size)):
        problems = loaded.problems[start : start + size]
        path = shard_path(config, "load", shard)
        write_records(path, problems)
        refs.append(ShardRef(stage="load", shard=shard, path=path, problems=len(problems)))
    return loaded.rows_in, refs, loaded.rejected


def _generate(
    config: RunConfig, stage: ModelStage, problems_ref: ShardRef, name: str, m: int
) -> ShardRef:
    problems = read_records(problems_ref.path, Problem)
    with make_backend(config.backend_for(stage), stage.model) as backend:
        out = generate_solutions(backend, problems, stage, m, name)
    path = shard_path(config, name, problems_ref.shard)
    keyed = [
        KeyedSolution(problem_id=p.id, solution=s) for p in problems for s in out.solutions[p.id]
    ]
    write_records(path, keyed)
    return ShardRef(
        stage=name,
        shard=problems_ref.shard,
        path=path,
        problems=len(problems),
        items=len(keyed),
        failures=out.failures,
        usage=out.usage,
    )


@task(name="golden")
def golden_task(config: RunConfig, problems_ref: ShardRef) -> ShardRef:
    return _generate(config, config.golden, problems_ref, "golden", 1)


@task(name="generate")
def generate_task(config: RunConfig, problems_ref: ShardRef) -> ShardRef:
    return _generate(config, config.generator, problems_ref, "generate", config.generator.M)


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


@task(name="complete")
def complete_task(
    config: RunConfig, problems_ref: ShardRef, golden_ref: ShardRef | None, generated_ref: ShardRef
) -> ShardRef:
    problems = read_records(problems_ref.path, Problem)
    targets, unlabelled = _targets(problems, _golden_answers(problems, golden_ref), generated_ref)
    with make_backend(config.backend_for(config.completer), config.completer.model) as backend:
        out = label_solutions(backend, targets, config.completer)
    path = shard_path(config, "complete", problems_ref.shard)
    write_records(path, out.solutions)
    # `failures` here are per problem: exactly one for each problem left without a label.
    return ShardRef(
        stage="complete",
        shard=problems_ref.shard,
        path=path,
        problems=len(problems),
        items=len(out.solutions),
        failures=unlabelled,
        usage=out.usage,
        rounds=out.rounds,
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


StageFutures = dict[str, list[PrefectFuture[ShardRef]]]


def _submit_shards(config: RunConfig, shards: list[ShardRef]) -> StageFutures:
    """golden ‖ generate per shard, then complete; Prefect resolves the futures passed along."""
    futures: StageFutures = {"golden": [], "generate": [], "complete": []}
    for ref in shards:
        golden = golden_task.submit(config, ref) if config.golden.source == "model" else None
        generated = generate_task.submit(config, ref)
        # Futures as arguments: Prefect waits for them and passes their results.
        completed = complete_task.submit(config, ref, golden, generated)  # type: ignore[call-overload]
        futures["complete"].append(completed)
        futures["generate"].append(generated)
        if golden is not None:
            futures["golden"].append(golden)
    return futures


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
    futures = _submit_shards(config, shards)
    refs = {name: [f.result() for f in stage] for name, stage in futures.items()}
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

    return ThreadPoolTaskRunner(max_workers=8)


def run_flow(config: RunConfig) -> dict[str, Any]:
    """The Python entry point: run the flow with the task runner the config asks for."""
    return mshep_flow.with_options(task_runner=build_task_runner(config))(config)
