"""Prefect: the mshep flow.

    load → (golden ‖ generate) per shard → complete per shard → write → card (→ Hub)

Task arguments are settings, paths and shard references; backends are built inside the task that
uses them, so nothing closes over a client and any task runner (threads, Ray) can run them. The
stage tasks and their cache keys are in `flows.stages`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from prefect import Task, flow, get_run_logger
from prefect.filesystems import RemoteFileSystem
from prefect.futures import PrefectFuture

from flows.stages import (
    complete_task,
    generate_task,
    load_task,
    push_task,
    settings,
    shard_path,
    stage_keys,
    work_dir,
    write_task,
)
from mshep.card import dataset_card
from mshep.config import RunConfig
from mshep.errors import ConfigError, MshepError
from mshep.hub import hub_token
from mshep.io import exists, write_json, write_text
from mshep.records import Failure
from mshep.summary import RunSummary, ShardRef, StageSummary, count_reasons, stage_summary

__all__ = ["build_task_runner", "mshep_flow", "run_flow", "stage_keys"]


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

    def options(self, stage: Task[..., ShardRef], out: str) -> Task[..., ShardRef]:
        refresh = not self.config.execution.cache or not exists(out)
        return stage.with_options(result_storage=self.storage, refresh_cache=refresh)

    def submit(self, shards: list[ShardRef]) -> StageFutures:
        """golden ‖ generate per shard, then complete; Prefect resolves the futures passed on."""
        config = self.config
        futures: StageFutures = {"golden": [], "generate": [], "complete": []}
        for ref in shards:
            golden = None
            if config.golden.source == "model":
                out = shard_path(config, "golden", ref.shard, ref.digest)
                golden = self.options(generate_task, out).submit(
                    "golden",
                    settings(config.golden),
                    1,
                    ref,
                    out,
                    config.backend_for(config.golden),
                )
                futures["golden"].append(golden)
            out = shard_path(config, "generate", ref.shard, ref.digest)
            generated = self.options(generate_task, out).submit(
                "generate",
                settings(config.generator),
                config.generator.M,
                ref,
                out,
                config.backend_for(config.generator),
            )
            futures["generate"].append(generated)
            out = shard_path(config, "complete", ref.shard, ref.digest)
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


def _stages(refs: dict[str, list[ShardRef]], futures: StageFutures) -> dict[str, StageSummary]:
    stages = {}
    for name, stage_refs in refs.items():
        if stage_refs:
            stages[name] = stage_summary(stage_refs)
            stages[name].reused_shards = reused(futures[name])
    return stages


def _summarise(
    rows_in: int,
    rejected: list[Failure],
    refs: dict[str, list[ShardRef]],
    stages: dict[str, StageSummary],
    written: dict[str, Any],
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
        stages=stages,
        quality=written["quality"],
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
    if config.output.push_to_hub:
        hub_token(config.output)  # a missing token fails now, not after hours of GPU time
    rows_in, shards, rejected = load_task(config)
    for failure in rejected:
        logger.warning("row not used: %s (%s)", failure.reason, failure.detail)
    logger.info("%d rows in, %d usable, %d shards", rows_in, rows_in - len(rejected), len(shards))
    futures = _Submitter(config).submit(shards)
    refs = {name: [f.result() for f in stage] for name, stage in futures.items()}
    stages = _stages(refs, futures)
    written = write_task(config, refs["complete"], stages)
    summary = _summarise(rows_in, rejected, refs, stages, written)
    summary.wall_time_s = round(time.monotonic() - started, 3)
    output = config.output.path.rstrip("/")
    write_json(f"{output}/summary.json", summary.model_dump())
    for line in summary.lines():
        logger.info(line)
    if summary.rows_labelled == 0:
        reasons = "; ".join(f"{n} × {why}" for why, n in summary.rows_not_labelled.items())
        raise MshepError(f"no row was labelled ({reasons}); nothing was written")
    write_text(f"{output}/README.md", dataset_card(config, summary))
    result = summary.model_dump()
    if config.output.push_to_hub:
        result["hub_url"] = push_task(config, summary)
        logger.info("pushed to %s", result["hub_url"])
    return result


def build_task_runner(config: RunConfig) -> Any:
    """Threads by default; a Ray cluster (prefect-ray) when `execution.task_runner` is 'ray'."""
    if config.execution.task_runner == "ray":
        from prefect.settings import PREFECT_API_URL
        from prefect_ray import RayTaskRunner

        if not PREFECT_API_URL.value():
            # Without one every Ray worker starts its own temporary Prefect server (DESIGN.md).
            raise ConfigError(
                "execution.task_runner 'ray' needs a Prefect server every Ray worker can reach: "
                "start one (`prefect server start`) and set PREFECT_API_URL"
            )
        return RayTaskRunner(
            address=config.execution.ray_address, init_kwargs={"include_dashboard": False}
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.execution.workers)


def run_flow(config: RunConfig) -> dict[str, Any]:
    """The Python entry point: run the flow with the task runner the config asks for."""
    return mshep_flow.with_options(task_runner=build_task_runner(config))(config)
