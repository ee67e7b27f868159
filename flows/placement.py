"""Prefect: where the stage tasks run and where their results persist, chosen from
`execution` by the flow itself, so a deployment, the UI, the CLI and a Python call all run the
same way. What a task computes is decided elsewhere (`flows.stages`, `mshep.shards`)."""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import queue
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.filesystems import RemoteFileSystem
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import get_call_parameters

from flows.handoff import HANDOFFS, InputFailed
from flows.stages import complete_task, generate_task
from mshep.config import RunConfig
from mshep.errors import ConfigError
from mshep.records import Stage
from mshep.shards import Layout, ShardPaths, ShardRef, is_done


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
    """Submits one stage task per shard to the run's task runner, named `<stage> shard k/n`.
    A task whose output file is gone (or every task, with `execution.cache` off) refreshes its
    cache entry: it runs again and its new result replaces the old one, rather than a cached
    reference to missing data."""

    def __init__(self, config: RunConfig, runner: TaskRunner[Any]) -> None:
        self.config = config
        self.runner = runner
        self.storage = result_storage(config)
        self.paths = ShardPaths(config)
        self.reused: dict[Stage, int] = dict.fromkeys(Stage, 0)  # shards done before this run
        # Shards whose completion did not start, or stopped, because an input task failed.
        self.blocked: set[int] = set()

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

    @property
    def hands_over(self) -> bool:
        """Whether a shard's completion starts with its generation, labelling each question as
        soon as its candidates are back (`flows.handoff`): when both run in this process, over
        HTTP (whose shared bound serves labelling first), with a worker for each. (With an
        `endpoint_limit`, the completion takes its share only once its first question is
        there, when its generation holds its own: neither waits for the other for ever.)"""
        config = self.config
        servings = [config.serving.for_stage(stage) for stage in (Stage.GENERATE, Stage.COMPLETE)]
        return (
            config.execution.task_runner != "ray"
            and config.execution.workers >= 2
            and all(s.kind == "http" for s in servings)
        )

    def run(self, shards: list[ShardRef]) -> Generator[Finished, None, None]:
        """Every shard's stage tasks, at most `execution.workers` submitted at once, each
        yielded with its result (or the exception it failed with) as it ends.

        A shard's completion is submitted once its golden shard is done and its generate task
        has started (`hands_over`: the candidates are handed over question by question), or
        else once both are done: a task submitted to wait for another would hold a worker
        thread while it waits, and the threads left would starve generation. Ready completions
        go before new generation, so shards finish (and are saved) early and the labelling
        chains of the first shards run while later shards generate. With one worker the order
        is generate 1, complete 1, generate 2, ... A shard whose golden or generate task failed
        is never completed (`blocked`; one already labelling stops, and is not counted as a
        failure of its own); every other shard still runs, so a resumed run has the least left
        to do."""
        config, total = self.config, len(shards)
        starts: deque[tuple[Stage, int]] = deque()
        for index in range(total):
            if config.golden.source == "model":
                starts.append((Stage.GOLDEN, index))
            starts.append((Stage.GENERATE, index))
        inputs: dict[int, dict[Stage, PrefectFuture[ShardRef]]] = {i: {} for i in range(total)}
        waits_for = (
            {Stage.GOLDEN, Stage.GENERATE} if config.golden.source == "model" else {Stage.GENERATE}
        )
        ready: list[int] = []  # shards whose completion can start, lowest first
        queued: set[int] = set()  # shards whose completion is ready or started
        in_flight: dict[PrefectFuture[ShardRef], tuple[Stage, int]] = {}
        ended: queue.SimpleQueue[PrefectFuture[ShardRef]] = queue.SimpleQueue()
        window, early = config.execution.workers, self.hands_over
        generating: set[int] = set()  # generate tasks started and not yet ended
        completed: set[int] = set()  # completions that ended
        handoffs: dict[int, str] = {}  # open handoffs, by shard: the generate shard's path

        def start(stage: Stage, index: int) -> None:
            if stage is Stage.GENERATE and early:
                handoffs[index] = self.paths(
                    Stage.GENERATE, shards[index].shard, shards[index].digest
                )
                HANDOFFS.open(handoffs[index])
            future = self._stage_task(stage, shards[index], total, inputs[index])
            in_flight[future] = (stage, index)
            _when_done(future, ended.put)

        def check(index: int) -> None:
            """Make `index`'s completion ready once what it waits for is there (its generate
            task started is enough when it is handed over)."""
            have = set(inputs[index]) | ({Stage.GENERATE} if index in generating else set())
            if index not in queued and index not in self.blocked and have >= waits_for:
                queued.add(index)
                heapq.heappush(ready, index)

        def drop(index: int) -> None:
            HANDOFFS.drop(handoffs.pop(index, ""))

        try:
            while True:
                while len(in_flight) < window and (ready or starts):
                    if ready:
                        if (index := heapq.heappop(ready)) not in self.blocked:
                            start(Stage.COMPLETE, index)
                        continue
                    stage, index = starts.popleft()
                    start(stage, index)
                    if stage is Stage.GENERATE and early:
                        generating.add(index)
                        check(index)
                if not in_flight:
                    break
                future = ended.get()
                stage, index = in_flight.pop(future)
                try:
                    result: ShardRef | BaseException = future.result()
                except Exception as error:  # the task failed: its exception says why
                    result = error
                if stage is Stage.COMPLETE:
                    drop(index)
                    completed.add(index)
                    # Labelling as it was generated, it stopped when that failed (maybe before
                    # the flow saw the generate task end): the generate task's failure says why.
                    if isinstance(result, InputFailed) or (
                        isinstance(result, BaseException) and index in self.blocked
                    ):
                        self.blocked.add(index)
                        continue
                    self.blocked.discard(index)  # (a completion done before: reused)
                else:
                    if stage is Stage.GENERATE:
                        generating.discard(index)
                        if (handoff := HANDOFFS.get(handoffs.get(index, ""))) is not None:
                            handoff.close(result)
                    if isinstance(result, BaseException):
                        if index not in completed:  # one that ended counts as itself
                            self.blocked.add(index)  # (or is in it already: it stopped)
                        if not any(
                            i == index for s, i in in_flight.values() if s is Stage.COMPLETE
                        ):
                            drop(index)
                    else:
                        inputs[index][stage] = future
                        check(index)
                yield Finished(stage, index, total, result)
        finally:  # a completion still waiting for candidates must not wait for ever
            for index in list(handoffs):
                if (handoff := HANDOFFS.get(handoffs[index])) is not None:
                    handoff.close(RuntimeError("the flow stopped scheduling its shards"))
                drop(index)

    def _stage_task(
        self,
        stage: Stage,
        ref: ShardRef,
        total: int,
        inputs: dict[Stage, PrefectFuture[ShardRef]],
    ) -> PrefectFuture[ShardRef]:
        """Submit one stage task of one shard. A completion gets its finished input tasks'
        futures (the runner resolves them at once, and the UI shows where its inputs came
        from); one started with its generation gets the generate shard's path alone."""
        config = self.config
        if stage is Stage.COMPLETE:
            return self._submit(
                complete_task, Stage.COMPLETE, ref, total,
                completer=config.completer, problems_ref=ref, golden_ref=inputs.get(Stage.GOLDEN),
                generated_ref=inputs.get(Stage.GENERATE),
                generated_out=self.paths(Stage.GENERATE, ref.shard, ref.digest),
                serving=config.serving.for_stage(Stage.COMPLETE),
            )  # fmt: skip
        settings = config.golden if stage is Stage.GOLDEN else config.generator
        return self._submit(
            generate_task, stage, ref, total,
            name=stage, stage=settings, m=1 if stage is Stage.GOLDEN else config.generator.M,
            problems_ref=ref, serving=config.serving.for_stage(stage),
        )  # fmt: skip


@dataclass(frozen=True)
class Finished:
    """One stage task of one shard that ended: its `ShardRef`, or the exception it failed with."""

    stage: Stage
    index: int
    total: int
    result: ShardRef | BaseException


def _when_done(future: PrefectFuture[Any], callback: Callable[[Any], None]) -> None:
    """Call `callback(future)` once the task ends, from whichever thread sees it end (at once
    if it has). Prefect's futures for the API's task runs have their own hook for it."""
    hook = getattr(future, "_add_prefect_done_callback", None) or future.add_done_callback
    hook(callback)
