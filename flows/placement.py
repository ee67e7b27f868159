"""Prefect: where the stage tasks run and where their results persist, chosen from
`execution` by the flow itself, so a deployment, the UI, the CLI and a Python call all run the
same way. What a task computes is decided elsewhere (`flows.stages`, `mshep.shards`)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.filesystems import RemoteFileSystem
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import get_call_parameters

from flows.stages import complete_task, generate_task
from mshep.config import RunConfig
from mshep.errors import ConfigError
from mshep.records import Stage
from mshep.shards import Layout, ShardPaths, ShardRef, is_done

StageFutures = dict[Stage, list[PrefectFuture[ShardRef]]]


def build_task_runner(config: RunConfig) -> TaskRunner[Any]:
    """Threads by default; a Ray cluster (prefect-ray) when `execution.task_runner` is 'ray'."""
    if config.execution.task_runner == "ray":
        from prefect.settings import PREFECT_API_URL
        from prefect_ray import RayTaskRunner

        if not PREFECT_API_URL.value():
            # Without one every Ray worker starts its own temporary Prefect server.
            raise ConfigError(
                "execution.task_runner 'ray' needs a Prefect server every Ray worker can reach: "
                "start one (`prefect server start`) and set PREFECT_API_URL"
            )
        return RayTaskRunner(
            address=config.execution.ray_address, init_kwargs={"include_dashboard": False}
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=config.execution.workers)


def result_storage(config: RunConfig) -> Path | str:
    """Where the stage tasks' results (small `ShardRef`s, keyed by cache key) persist: next to
    the shard data by default, so a run resumes wherever its output lives. An s3:// prefix is
    saved as a Prefect block holding only the path (Prefect wants remote storage as a saved
    block); endpoint and credentials stay in the environment (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, ...), or name a block of your own in `execution.result_storage_block`."""
    if config.execution.result_storage_block:
        return config.execution.result_storage_block  # Prefect loads the saved block by slug
    base = config.execution.result_storage or Layout.of(config).results
    if "://" in base and not base.startswith("file://"):
        name = f"mshep-results-{hashlib.sha256(base.encode()).hexdigest()[:12]}"
        RemoteFileSystem(basepath=base).save(name, overwrite=True)
        return f"remote-file-system/{name}"
    return Path(base.removeprefix("file://")).resolve()


class Submitter:
    """Submits one stage task per shard to the run's task runner, named `<stage> shard k/n`
    and tagged with its stage. A task whose output file is gone (or every task, with
    `execution.cache` off) refreshes its cache entry: it runs again and its new result replaces
    the old one, rather than a cached reference to missing data."""

    def __init__(self, config: RunConfig, runner: TaskRunner[Any]) -> None:
        self.config = config
        self.runner = runner
        self.storage = result_storage(config)
        self.paths = ShardPaths(config)
        self.reused: dict[Stage, int] = dict.fromkeys(Stage, 0)  # shards done before this run

    def _submit(
        self, task: Task[..., ShardRef], which: Stage, ref: ShardRef, total: int, /, **kwargs: Any
    ) -> PrefectFuture[ShardRef]:
        out = self.paths(which, ref.shard, ref.digest)
        reuse = self.config.execution.cache
        done = reuse and is_done(out)
        self.reused[which] += done
        configured = task.with_options(
            name=which.value,
            task_run_name=f"{which.value} shard {ref.shard + 1}/{total}",
            tags=["mshep", which.value],
            result_storage=self.storage,
            refresh_cache=not done,
        )
        parameters = get_call_parameters(configured.fn, (), {**kwargs, "out": out, "reuse": reuse})
        with self._resources(which):
            return self.runner.submit(configured, parameters)

    @contextlib.contextmanager
    def _resources(self, stage: Stage) -> Iterator[None]:
        """The stage's GPUs per task, on Ray (prefect-ray reads them from its context)."""
        gpus = self.config.execution.gpus_for(stage.value)
        if self.config.execution.task_runner != "ray" or not gpus:
            yield
            return
        from prefect_ray.context import remote_options

        with remote_options(num_gpus=gpus):
            yield

    def submit(self, shards: list[ShardRef]) -> StageFutures:
        """golden ‖ generate per shard, then complete; the runner resolves the futures passed
        on, so a shard's completion starts when its own golden and generate shards are done."""
        config, total = self.config, len(shards)
        futures: StageFutures = {Stage.GOLDEN: [], Stage.GENERATE: [], Stage.COMPLETE: []}
        for ref in shards:
            golden = None
            if config.golden.source == "model":
                golden = self._submit(
                    generate_task, Stage.GOLDEN, ref, total,
                    name=Stage.GOLDEN, stage=config.golden, m=1, problems_ref=ref,
                    serving=config.serving.for_stage(Stage.GOLDEN),
                )  # fmt: skip
                futures[Stage.GOLDEN].append(golden)
            generated = self._submit(
                generate_task, Stage.GENERATE, ref, total,
                name=Stage.GENERATE, stage=config.generator, m=config.generator.M,
                problems_ref=ref, serving=config.serving.for_stage(Stage.GENERATE),
            )  # fmt: skip
            futures[Stage.GENERATE].append(generated)
            completed = self._submit(
                complete_task, Stage.COMPLETE, ref, total,
                completer=config.completer, problems_ref=ref, golden_ref=golden,
                generated_ref=generated, serving=config.serving.for_stage(Stage.COMPLETE),
            )  # fmt: skip
            futures[Stage.COMPLETE].append(completed)
        return futures
