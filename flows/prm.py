"""Prefect: the mshep flow, the one entry point of every run: a deployment (`prefect deployment
run`, the UI), the CLI and a Python call all go through `mshep_flow`.

    preflight → load → (golden ‖ generate) per shard → complete per shard → write → card (→ Hub)

Its parameters are the config's sections, so the UI shows each as a form; a run's are merged over
a deployment's field by field (`flows.parameters`), so overriding `completer.N` keeps every
other setting of the deployment. The flow
then picks its own task runner from `execution` (threads, or Ray) and runs the checks first.
"""

# No `from __future__ import annotations` here: Prefect builds the parameter model from the
# flow's annotations, and a run loaded from the entrypoint cannot resolve them as strings.
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from pydantic import ValidationError

from flows.artifacts import RunProgress, publish_report
from flows.endpoints import ensure_limits
from flows.engines import run_engines
from flows.lock import output_lock
from flows.parameters import DEFAULTS, SECTIONS, run_config
from flows.placement import Submitter, build_task_runner
from flows.stages import (
    Outputs,
    failed,
    load_task,
    preflight_task,
    push_task,
    result_of,
    write_task,
)
from mshep.card import dataset_card, public_config
from mshep.config import (
    CompleterConfig,
    DatasetConfig,
    ExecutionConfig,
    GeneratorConfig,
    GoldenConfig,
    OutputConfig,
    RunConfig,
    ServingConfig,
)
from mshep.errors import MshepError
from mshep.failures import RunIncomplete
from mshep.io import write_json, write_text
from mshep.records import Failure, Stage
from mshep.shards import Layout, ShardRef, stage_keys
from mshep.summary import RunSummary, StageSummary, count_reasons, stage_summary

__all__ = ["build_task_runner", "mshep_flow", "run_config", "run_flow", "stage_keys"]


def run_name(config: RunConfig) -> str:
    """`<dataset> · <generator model> · M=… N=…`, the flow run's name."""
    source = config.dataset.source.rstrip("/").rsplit("/", 1)[-1]
    model = config.generator.model.rsplit("/", 1)[-1]
    return f"{source} · {model} · M={config.generator.M} N={config.completer.N}"


def _run_name() -> str:
    """The name from the parameters as given; a deployment run is renamed once its parameters
    are merged over the deployment's (`_rename_run`)."""
    params = flow_run.parameters
    try:
        return run_name(RunConfig.model_validate({k: v for k, v in params.items() if v}))
    except ValidationError:
        return "mshep"


def _rename_run(config: RunConfig) -> None:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        return
    from prefect.client.orchestration import get_client

    if context.flow_run.name != run_name(config):
        with get_client(sync_client=True) as client:
            client.update_flow_run(context.flow_run.id, name=run_name(config))


@flow(name="mshep", flow_run_name=_run_name, log_prints=False)
def mshep_flow(
    dataset: DatasetConfig = DEFAULTS.dataset,
    golden: GoldenConfig = DEFAULTS.golden,
    generator: GeneratorConfig = DEFAULTS.generator,
    completer: CompleterConfig = DEFAULTS.completer,
    serving: ServingConfig = DEFAULTS.serving,
    output: OutputConfig = DEFAULTS.output,
    execution: ExecutionConfig = DEFAULTS.execution,
) -> dict[str, Any]:
    """Math-Shepherd PRM dataset: golden answers, M candidates, N rollouts per step, labels."""
    sections = {
        "dataset": dataset,
        "golden": golden,
        "generator": generator,
        "completer": completer,
        "serving": serving,
        "output": output,
        "execution": execution,
    }
    try:
        return _run(run_config(sections))
    except MshepError as error:
        # The user's to fix (a setting, a column, an endpoint, a failed shard): the run ends
        # Failed with the one-line message, and a caller gets the error itself; no traceback.
        return failed(error)


def _run(config: RunConfig) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.monotonic()
    _rename_run(config)
    logger.info("config:\n%s", public_config(config))
    runner = build_task_runner(config)  # refuses Ray without a Prefect API, before any work
    checks: str = result_of(preflight_task(config, return_state=True))
    logger.info("checks passed:\n%s", checks)
    ensure_limits([config.serving.for_stage(stage) for stage in ("golden", "generate", "complete")])
    with output_lock(Layout.of(config)):
        return _label(config, runner, checks, started)


def _label(config: RunConfig, runner: Any, checks: str, started: float) -> dict[str, Any]:
    """Load, the stage tasks on the run's runner, then outputs, summary and card."""
    logger = get_run_logger()
    rows_in, shards, rejected, dataset_line = result_of(load_task(config, return_state=True))
    checks = f"{checks}\n{dataset_line}"
    for failure in rejected:
        logger.warning("row not used: %s (%s)", failure.reason, failure.detail)
    logger.info("%d rows in, %d usable, %d shards", rows_in, rows_in - len(rejected), len(shards))
    threading.Thread(target=_warm_imports, name="mshep-warm-imports", daemon=True).start()
    with Outputs(config) as outputs:  # a run that fails leaves no half dataset
        with runner, run_engines(config) as engines:  # engines: inside the runner's Ray
            submitter = Submitter(engines.config, runner)
            stages_run = [Stage.GENERATE, Stage.COMPLETE]
            if config.golden.source == "model":
                stages_run.insert(0, Stage.GOLDEN)
            progress = RunProgress({stage.value: len(shards) for stage in stages_run})
            # every shard task ends; then a failed one fails the run
            refs = settle(submitter, shards, stages_run, progress, outputs.add)
            progress.finish()
            engine_stats = engines.infos()
        stages = _stages(refs, submitter.reused)
        written = write_task(outputs, refs[Stage.COMPLETE], stages)
    summary = _summarise(rows_in, rejected, refs, stages, written)
    summary.wall_time_s = round(time.monotonic() - started, 3)
    summary.checks = checks.splitlines()
    summary.engines = engine_stats
    return _finish(config, summary)


def _warm_imports() -> None:
    """Import what writing the outputs needs (fsspec, pyarrow, and pandas, which pyarrow
    imports on its first array: ~1 s together) while the model works, not after its last
    answer."""
    with contextlib.suppress(Exception):
        import fsspec  # noqa: F401
        import pyarrow as pa
        import pyarrow.parquet

        pa.array([0])


def _finish(config: RunConfig, summary: RunSummary) -> dict[str, Any]:
    """Summary, card and Hub push; a run that labelled nothing fails, naming why."""
    logger = get_run_logger()
    layout = Layout.of(config)
    write_json(layout.summary, summary.model_dump())
    for line in summary.lines():
        logger.info(line)
    if summary.rows_labelled == 0:
        publish_report(config, summary, None)  # the table of rows not labelled says why
        reasons = "; ".join(f"{n} × {why}" for why, n in summary.rows_not_labelled.items())
        raise MshepError(f"no row was labelled ({reasons}); nothing was written")
    card = dataset_card(config, summary)
    write_text(layout.card, card)
    publish_report(config, summary, layout.card)
    result = summary.model_dump()
    if config.output.push_to_hub:
        result["hub_url"] = push_task(config, summary, card)
        logger.info("pushed to %s", result["hub_url"])
    return result


# Who else wants to see shards finish in this process (the CLI's line on a terminal).
CONSOLE: list[Callable[[str], None]] = []


def settle(
    submitter: Submitter,
    shards: list[ShardRef],
    stages: list[Stage],
    progress: RunProgress,
    completed: Callable[[int, ShardRef], None],
) -> dict[Stage, list[ShardRef]]:
    """Run every shard task (`Submitter.run`) and take each as it finishes (progress moves
    with them; a finished completion goes to `completed`, which appends it to the outputs),
    so each finished one is saved; then, if any failed, fail the run naming the first cause in
    shard order: a run that lost rows to the infrastructure never exits 0."""
    done: dict[Stage, dict[int, ShardRef]] = {stage: {} for stage in stages}
    failed: list[tuple[int, int, str]] = []
    requests, retries = 0, 0
    unwritten: Exception | None = None
    for end in submitter.run(shards):
        if isinstance(end.result, BaseException):  # the task failed: its exception says why
            where = f"{end.stage.value} shard {end.index + 1}/{end.total}"
            failed.append((end.index, stages.index(end.stage), f"{where}: {end.result}"))
            continue
        ref = done[end.stage][end.index] = end.result
        progress.shard_done(end.stage)
        if end.stage is Stage.COMPLETE and unwritten is None:
            try:
                completed(end.index, ref)
            except Exception as error:  # the output cannot be written (a full disk): every
                unwritten = error  # shard task still ends and is saved, then the run fails
        requests, retries = requests + ref.usage.requests, retries + ref.retries
        for show in CONSOLE:
            show(f"{progress.describe()}; {requests} requests, {retries} retries")
    if failed:
        blocked = len(submitter.blocked)
        raise RunIncomplete(
            f"{len(failed)} of {len(shards) * len(stages) - blocked} shard tasks failed"
            + (f" and {blocked} completion(s) could not run (an input failed)" if blocked else "")
            + f" ({min(failed)[2]}); finished shards are kept: run the same command to resume"
        )
    if unwritten is not None:
        raise unwritten
    return {stage: [refs[i] for i in sorted(refs)] for stage, refs in done.items()}


def _stages(refs: dict[Stage, list[ShardRef]], reused: dict[Stage, int]) -> dict[str, StageSummary]:
    stages = {}
    for stage, stage_refs in refs.items():
        if stage_refs:
            stages[stage.value] = stage_summary(stage_refs)
            stages[stage.value].reused_shards = reused[stage]
    return stages


def _summarise(
    rows_in: int,
    rejected: list[Failure],
    refs: dict[Stage, list[ShardRef]],
    stages: dict[str, StageSummary],
    written: dict[str, Any],
) -> RunSummary:
    unlabelled = [f for ref in refs[Stage.COMPLETE] for f in ref.failures]
    summary = RunSummary(
        rows_in=rows_in,
        rows_labelled=written["problems_labelled"],
        rows_not_labelled=count_reasons([*rejected, *unlabelled]),
        solutions_generated=sum(ref.items for ref in refs[Stage.GENERATE]),
        solutions_labelled=sum(ref.items for ref in refs[Stage.COMPLETE]),
        labels=written["labels"],
        rows_out=written["rows_out"],
        rows_dropped=written["rows_dropped"],
        outputs=written["outputs"],
        labelling_rounds=max((ref.rounds for ref in refs[Stage.COMPLETE]), default=0),
        stages=stages,
        quality=written["quality"],
    )
    accounted = summary.rows_labelled + sum(summary.rows_not_labelled.values())
    if accounted != rows_in:  # a bug, not bad input: every row must land somewhere
        raise RuntimeError(f"accounting error: {rows_in} rows in, {accounted} accounted for")
    return summary


def run_flow(config: RunConfig) -> dict[str, Any]:
    """The Python entry point: the flow with the config's sections as its parameters."""
    return mshep_flow(**{name: getattr(config, name) for name in SECTIONS})
