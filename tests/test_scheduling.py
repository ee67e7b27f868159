"""The order in which the flow submits its shard tasks (`flows.placement.Submitter.run`).

A runner stand-in runs each submitted task on a pool of threads (as Prefect's threads runner
does) and records what was submitted when, so the tests read the schedule, not the clock:
a completion is submitted only once its shard's inputs are done (never to wait on a worker),
ready completions go before new generation, no more than `execution.workers` tasks are out at
once, and a shard whose input failed is never completed while every other shard still runs.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.handoff import HANDOFFS, Handoff, InputFailed
from flows.placement import Submitter
from mshep.config import RunConfig
from mshep.records import Stage
from mshep.shards import ShardRef


class FakeFuture:
    """The part of a Prefect future the submitter uses."""

    def __init__(self, inner: concurrent.futures.Future[ShardRef]) -> None:
        self.inner = inner

    def add_done_callback(self, fn: Any) -> None:
        self.inner.add_done_callback(lambda _: fn(self))

    def result(self) -> ShardRef:
        return self.inner.result()


class Runner:
    """Runs a stage task's stand-in on `threads` threads; records submissions and the most
    tasks out at once. `fail` names (stage, shard) pairs whose task raises."""

    def __init__(self, threads: int, fail: set[tuple[str, int]] = frozenset()) -> None:  # type: ignore[assignment]
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads)
        self.fail = fail
        self.log: list[tuple[str, int]] = []
        self.submitted: dict[tuple[str, int], concurrent.futures.Future[ShardRef]] = {}
        self.completion_ends_first = False  # a failed generate task waits for its completion
        self.out = self.most_out = 0
        self.lock = threading.Lock()

    def submit(self, task: Any, parameters: dict[str, Any]) -> FakeFuture:
        stage = task.name
        shard = parameters["problems_ref"].shard
        handoff = None
        if stage == "generate":  # it closes its own handoff as it ends, as `generate_task` does
            handoff = HANDOFFS.get(parameters["out"])
        if stage == "complete":  # its inputs are finished futures, resolved at once
            inputs = [parameters["generated_ref"], parameters["golden_ref"]]
            assert all(f is None or f.inner.done() for f in inputs), "submitted to wait"
            if parameters["generated_ref"] is None:  # handed over as it is generated
                handoff = HANDOFFS.get(parameters["generated_out"])
                assert handoff is not None, "started with its generation, but no handoff"
        with self.lock:
            self.log.append((stage, shard))
            self.out += 1
            self.most_out = max(self.most_out, self.out)
        future = FakeFuture(self.pool.submit(self._run, stage, shard, handoff))
        self.submitted[(stage, shard)] = future.inner
        return future

    def _run(self, stage: str, shard: int, handoff: Handoff | None) -> ShardRef:
        try:
            if (stage, shard) in self.fail and stage == "complete":
                raise RuntimeError(f"{stage} {shard} broke")
            if stage == "generate":
                if (stage, shard) in self.fail:
                    error = RuntimeError(f"{stage} {shard} broke")
                    if handoff is not None:
                        handoff.close(error)  # its completion may end before it does
                        if self.completion_ends_first:
                            while ("complete", shard) not in self.submitted:
                                threading.Event().wait(0.01)
                            concurrent.futures.wait([self.submitted[("complete", shard)]], 5)
                    raise error
                return ShardRef(stage=stage, shard=shard, path=f"/x/{stage}-{shard}")
            if handoff is not None:  # as `flows.handoff.Candidates` does: wait for the end
                ended = threading.Event()
                handoff._watch(ended.set)
                while handoff._since(0)[1] is None:
                    ended.wait()
                    ended.clear()
                if isinstance(end := handoff._since(0)[1], BaseException):
                    raise InputFailed(f"its generate task failed: {end}")
            if (stage, shard) in self.fail:
                raise RuntimeError(f"{stage} {shard} broke")
            return ShardRef(stage=stage, shard=shard, path=f"/x/{stage}-{shard}")
        finally:
            with self.lock:
                self.out -= 1


def config(tmp_path: Path, workers: int, golden: str = "reference") -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"source": "x.jsonl"},
            "golden": {"source": golden, "model": "strong"},
            "generator": {"model": "weak"},
            "completer": {"model": "weak"},
            "output": {"path": str(tmp_path)},
            "execution": {"workers": workers},
        }
    )


def shards(n: int) -> list[ShardRef]:
    return [ShardRef(stage="load", shard=i, path=f"/x/load-{i}", digest=str(i)) for i in range(n)]


@pytest.fixture(params=[True, False], ids=["handed-over", "after-generation"])
def hand_over(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each test with completions started with their generation (where there are workers for
    both), and with completions started once their generation is done."""
    if not request.param:
        monkeypatch.setattr(Submitter, "hands_over", property(lambda self: False))
    return bool(request.param)


def run(tmp_path: Path, runner: Runner, n: int, workers: int, golden: str = "reference") -> Any:
    submitter = Submitter(config(tmp_path, workers, golden), runner)  # type: ignore[arg-type]
    ended = list(submitter.run(shards(n)))
    assert HANDOFFS._open == {}, "a handoff left open"
    return submitter, ended


def test_one_worker_runs_each_shard_through_before_the_next(tmp_path: Path) -> None:
    runner = Runner(threads=1)
    _, ended = run(tmp_path, runner, 3, workers=1)
    order = [("generate", 0), ("complete", 0), ("generate", 1), ("complete", 1)]
    assert runner.log == [*order, ("generate", 2), ("complete", 2)]
    assert [(e.stage.value, e.index) for e in ended] == runner.log
    assert all(isinstance(e.result, ShardRef) for e in ended)


def test_golden_and_generate_both_finish_before_the_completion(tmp_path: Path) -> None:
    runner = Runner(threads=1)
    run(tmp_path, runner, 2, workers=1, golden="model")
    assert runner.log == [
        ("golden", 0), ("generate", 0), ("complete", 0),
        ("golden", 1), ("generate", 1), ("complete", 1),
    ]  # fmt: skip


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_never_more_tasks_out_than_workers_and_ready_completions_go_first(
    tmp_path: Path, workers: int, hand_over: bool
) -> None:
    runner = Runner(threads=workers)
    _, ended = run(tmp_path, runner, 12, workers=workers)
    assert runner.most_out <= workers
    assert sorted((e.stage.value, e.index) for e in ended) == sorted(
        (stage, i) for stage in ("generate", "complete") for i in range(12)
    )
    # When a task ends, a completion made ready by it is the next one submitted: so no
    # completion is ever submitted later than `workers` submissions after its generation.
    for i in range(12):
        assert runner.log.index(("complete", i)) - runner.log.index(("generate", i)) <= workers


def test_a_failed_input_blocks_only_its_own_completion(tmp_path: Path, hand_over: bool) -> None:
    runner = Runner(threads=2, fail={("generate", 1), ("golden", 3)})
    submitter, ended = run(tmp_path, runner, 5, workers=2, golden="model")
    assert submitter.blocked == {1, 3}
    completed = {e.index for e in ended if e.stage is Stage.COMPLETE}
    assert completed == {0, 2, 4}
    failed = {(e.stage.value, e.index) for e in ended if isinstance(e.result, BaseException)}
    assert failed == {("generate", 1), ("golden", 3)}
    assert ("generate", 3) in runner.log and ("golden", 1) in runner.log  # siblings still ran


def test_a_completion_starts_with_its_generation_when_handed_over(
    tmp_path: Path, hand_over: bool
) -> None:
    runner = Runner(threads=4)
    run(tmp_path, runner, 4, workers=4)
    if hand_over:  # generate 1, complete 1 (waiting for candidates), generate 2, complete 2
        assert runner.log[:4] == [
            ("generate", 0),
            ("complete", 0),
            ("generate", 1),
            ("complete", 1),
        ]
    else:
        assert runner.log[:4] == [("generate", i) for i in range(4)]


def test_one_worker_never_hands_over(tmp_path: Path) -> None:
    assert not Submitter(config(tmp_path, 1), Runner(threads=1)).hands_over  # type: ignore[arg-type]
    assert Submitter(config(tmp_path, 2), Runner(threads=2)).hands_over  # type: ignore[arg-type]
    on_ray = config(tmp_path, 2).model_copy(deep=True)
    on_ray.execution.task_runner = "ray"  # its tasks run in other processes
    assert not Submitter(on_ray, Runner(threads=2)).hands_over  # type: ignore[arg-type]


def test_a_flow_that_stops_scheduling_releases_completions_waiting_for_candidates(
    tmp_path: Path,
) -> None:
    """A flow that stops while completions wait for candidates (an exception in the flow, a
    Ctrl-C) ends them, so the runner's threads can exit, instead of leaving them waiting."""
    runner = Runner(threads=4)
    release = threading.Event()
    run_task = runner._run

    def second_generation_hangs(stage: str, shard: int, handoff: Handoff | None) -> ShardRef:
        if (stage, shard) == ("generate", 1):
            release.wait(10)
        return run_task(stage, shard, handoff)

    runner._run = second_generation_hangs  # type: ignore[method-assign]
    schedule = Submitter(config(tmp_path, 4), runner).run(shards(2))  # type: ignore[arg-type]
    assert next(schedule).stage is Stage.GENERATE  # generate 1 ended; shard 2 still generates
    schedule.close()  # the flow stops here
    waiting = runner.submitted[("complete", 1)]
    with pytest.raises(InputFailed, match="the flow stopped scheduling"):
        waiting.result(timeout=5)
    release.set()
    assert HANDOFFS._open == {}


def test_a_completion_that_failed_before_its_generation_is_counted_once(tmp_path: Path) -> None:
    """Its own failure is reported; it is not also counted as a completion that could not run."""
    runner = Runner(threads=4, fail={("complete", 0), ("generate", 0)})
    run_task = runner._run

    def generation_fails_last(stage: str, shard: int, handoff: Handoff | None) -> ShardRef:
        if stage == "generate":
            while ("complete", shard) not in runner.submitted:
                threading.Event().wait(0.01)
            concurrent.futures.wait([runner.submitted[("complete", shard)]], timeout=5)
        return run_task(stage, shard, handoff)

    runner._run = generation_fails_last  # type: ignore[method-assign]
    submitter, ended = run(tmp_path, runner, 2, workers=4)
    failed = {(e.stage.value, e.index) for e in ended if isinstance(e.result, BaseException)}
    assert failed == {("complete", 0), ("generate", 0)}
    assert submitter.blocked == set()


def test_a_completion_stopped_by_its_failed_generation_is_not_a_failure_of_its_own(
    tmp_path: Path,
) -> None:
    """Even when it ends first: the generate task closes its handoff as it fails, so the
    completion can stop before the flow sees the generate task end."""
    runner = Runner(threads=4, fail={("generate", 1)})
    runner.completion_ends_first = True
    submitter, ended = run(tmp_path, runner, 3, workers=4)
    assert runner.submitted[("complete", 1)].exception() is not None  # it did run, and stop
    failed = {(e.stage.value, e.index) for e in ended if isinstance(e.result, BaseException)}
    assert failed == {("generate", 1)}
    assert submitter.blocked == {1}
