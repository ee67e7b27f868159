"""Prefect: the run's vLLM engines (serving.kind 'vllm'), started once before the first shard
and freed when the flow ends, whichever way it ends (unless `serving.keep_engines`).

Starting is a task of its own ("start engines"), so the UI shows the load, its time and, if an
engine cannot load, the reason naming the setting, before any shard is submitted. The stage
tasks then only look the engines up by name (`mshep.backends.vllm`). With the threads runner the
flow connects to Ray itself (`execution.ray_address`, or a local Ray); with the Ray runner the
runner's connection is used, so this is entered inside the runner.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from flows.stages import failed, result_of
from mshep.checks import used_stages
from mshep.config import RunConfig
from mshep.errors import MshepError
from mshep.summary import engine_line

if TYPE_CHECKING:  # the library module is imported when engines are used (it needs ray)
    from mshep.backends.vllm import EngineSpec


def engine_specs(config: RunConfig) -> list[EngineSpec]:
    """One spec per model stage used; stages with equal specs share engines."""
    from mshep.backends.vllm import engine_spec, unique

    return unique(
        engine_spec(config.serving.for_stage(name), stage.model)
        for name, stage in used_stages(config).items()
    )


@task(name="start engines", cache_policy=NO_CACHE)
def start_engines_task(specs: list[EngineSpec]) -> Any:
    """Load every engine (or find it loaded by a kept earlier run) and wait for it."""
    from mshep.backends.vllm import start_engines

    try:
        infos = start_engines(specs)
    except MshepError as error:
        return failed(error)
    for info in infos:
        get_run_logger().info(engine_line(info))
    return infos


class Engines:
    """What the flow holds while its engines run: the config its tasks get (the engines' scope
    in it), the engines' specs, and their counters at the end."""

    def __init__(self, config: RunConfig, specs: list[EngineSpec]) -> None:
        self.config = config
        self.specs = specs

    def infos(self) -> list[dict[str, Any]]:
        if not self.specs:
            return []
        from mshep.backends.vllm import engine_infos

        return engine_infos(self.specs)


def _scoped(config: RunConfig) -> RunConfig:
    """Engines owned by this run carry its id in their names: a concurrent run with the same
    settings starts its own and never frees these. Kept engines are shared by name."""
    if config.serving.keep_engines:
        return config
    context = FlowRunContext.get()
    run = context.flow_run.id.hex if context and context.flow_run else uuid.uuid4().hex
    serving = config.serving.model_copy(update={"engine_scope": run[:8]})
    return config.model_copy(update={"serving": serving})


@contextlib.contextmanager
def run_engines(config: RunConfig) -> Iterator[Engines]:
    if config.serving.kind != "vllm":
        yield Engines(config, [])
        return
    from mshep.backends.vllm import connect, stop_engines

    logger = get_run_logger()
    config = _scoped(config)
    specs = engine_specs(config)
    owned = connect(config.execution.ray_address)
    if owned and config.serving.keep_engines:
        logger.warning(
            "serving.keep_engines: this run started its own Ray, which ends with it, engines "
            "included; set execution.ray_address to keep them on a cluster"
        )
    keep = config.serving.keep_engines
    try:
        try:
            result_of(start_engines_task(specs, return_state=True))
        except BaseException:
            keep = False  # engines that did not all load are no use to the next run
            raise
        yield Engines(config, specs)
    finally:
        try:
            if not keep:
                for problem in stop_engines(specs):
                    logger.warning("engine not freed: %s", problem)
        finally:
            if owned:
                import ray

                ray.shutdown()
