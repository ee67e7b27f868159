"""Prefect: the stage tasks. Each is thin: read a shard, call the library, write the shard,
return a small `ShardRef` (where the data is, its digest and counts, never the data).

Cache keys (docs/design.md): a stage-and-shard task is keyed on its inputs and its source, not the
run id, so a new run (after a crash, or with other settings) reuses every shard whose inputs did
not change. Its inputs are what its output depends on: the stage's settings, the input shards'
references with their content digests, and its output path, which `mshep.shards` derives from
the settings and the library code of the stage. The serving config is an input (the task needs
it) but not part of the key; secrets are never inputs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.states import Failed, State

from flows.endpoints import endpoint_slots
from flows.handoff import Candidates, Handoff, handoff_for
from flows.secrets import hub_token, serving_token
from mshep.backends import make_backend
from mshep.checks import dataset_report, preflight
from mshep.completion import golden_answers, label_solutions, label_targets
from mshep.config import CompleterConfig, ModelStage, RunConfig, ServingConfig
from mshep.errors import MshepError
from mshep.failures import RequestTally, ShardFailed, failed_share
from mshep.formats import COLUMNS, format_rows
from mshep.generation import generate_solutions
from mshep.hub import push_dataset
from mshep.io import DatasetWriter, read_records
from mshep.labelling import LabelTarget
from mshep.loading import load_problems
from mshep.records import Failure, KeyedSolution, LabelledSolution, Problem, Stage
from mshep.shards import Layout, ShardRef, finish_shard, finished, write_question_shards
from mshep.summary import QualityTally, RunSummary, StageSummary

# No task carries tags: Prefect checks a tagged task run against tag concurrency limits with an
# API call (and a lease-renewal thread) when it starts, ~0.2 s a task on a busy server. The flow
# run has the deployment's tags; task names (`generate shard 3/8`) say the rest.


@task(name="preflight")
def preflight_task(config: RunConfig) -> str:
    """Endpoints, dataset columns, output and tokens, before any model call. A problem found
    is the task's Failed state with its one-line message (no traceback: it is not a bug)."""
    try:
        return preflight(config, hub_token, dataset=False)  # the load task reads it, once
    except MshepError as error:
        return failed(error)


def failed(error: MshepError) -> Any:
    """A Failed state that carries `error`: Prefect raises it for whoever asks the result."""
    return Failed(message=str(error), data=error)


def result_of(state: State[Any]) -> Any:
    """A task's result, or the `MshepError` its Failed state carries, raised (no traceback)."""
    if state.is_failed():
        error = state.result(raise_on_failure=False)
        raise error if isinstance(error, MshepError) else MshepError(state.message or "")
    return state.result()


@task(name="load questions")
def load_task(config: RunConfig) -> Any:
    """Not cached: the input is read fresh each run; shards whose questions did not change keep
    their paths and digests, so their downstream tasks hit the cache. Returns rows in, shards,
    rejected rows and the dataset's line of the checks; a dataset with no usable row (or an
    unreadable one) is the task's Failed state with its one-line message."""
    try:
        loaded = load_problems(config.dataset, need_reference=config.golden.source == "reference")
        report = dataset_report(config, loaded)
    except MshepError as error:
        return failed(error)
    shards = write_question_shards(config, loaded.problems)
    return loaded.rows_in, shards, loaded.rejected, report


# The cache key of a stage task: its inputs (settings, input shard references with their
# digests, output path) and its source; not the run id, not where the model is served, not
# whether a finished shard may be reused.
SHARD_CACHE = (INPUTS - "serving" - "reuse") + TASK_SOURCE
# A completion is keyed on its generate shard's path (settings, code, questions), not on that
# shard's reference: one started while its candidates are still being generated has none yet.
# The completion shard holds the candidates it labelled, so it is whole either way.
COMPLETE_CACHE = (INPUTS - "serving" - "reuse" - "generated_ref") + TASK_SOURCE


@task(name="generate", cache_policy=SHARD_CACHE, persist_result=True)
def generate_task(
    name: Stage,
    stage: ModelStage,
    m: int,
    problems_ref: ShardRef,
    out: str,
    serving: ServingConfig,
    reuse: bool = True,
) -> ShardRef:
    """M solutions per question of one shard (M=1 for golden solutions)."""
    if reuse and (done := finished(out)):
        return done
    problems = read_records(problems_ref.path, Problem)
    handoff = handoff_for(out)  # a completion labelling this shard as it is generated
    try:
        ref = _generate(name, stage, m, problems_ref, problems, out, serving, handoff)
    except BaseException as error:
        if handoff is not None:  # the completion stops with it (the flow would close it too)
            handoff.close(error)
        raise
    if handoff is not None:
        handoff.close(ref if isinstance(ref, ShardRef) else RuntimeError(ref.message))
    return ref


def _generate(
    name: Stage,
    stage: ModelStage,
    m: int,
    problems_ref: ShardRef,
    problems: list[Problem],
    out: str,
    serving: ServingConfig,
    handoff: Handoff | None,
) -> Any:
    """`generate_task`'s work: its `ShardRef`, or the Failed state of a shard that lost
    requests."""
    token = serving_token(serving)  # read here, never a task input
    publish = None if handoff is None else handoff.put
    with endpoint_slots(serving) as held, make_backend(held, token) as client:
        result = generate_solutions(client, problems, stage, m, name.value, publish)
    if lost := _lost_requests(result.tally, serving, name, problems_ref):
        return failed(lost)
    keyed = [
        KeyedSolution(problem_id=p.id, solution=s) for p in problems for s in result.solutions[p.id]
    ]
    return finish_shard(
        name,
        problems_ref.shard,
        out,
        keyed,
        problems=len(problems),
        items=len(keyed),
        failures=result.failures,
        usage=result.usage,
        retries=_retries(client),
        failed_requests=dict(result.tally.causes),
        resampled=result.resampled,
    )


def _lost_requests(
    tally: RequestTally, serving: ServingConfig, stage: Stage, ref: ShardRef
) -> ShardFailed | None:
    """A shard that lost requests to the infrastructure beyond the allowed share is not done:
    its task fails with the causes (each first error logged at WARNING), writes nothing and is
    not cached."""
    for cause, error in tally.first_error.items():
        get_run_logger().warning(
            "%s shard %d: %s (first: %s)", stage.value, ref.shard + 1, cause, error
        )
    return failed_share(tally, serving.max_failed_share, f"{stage.value} shard {ref.shard + 1}")


def _retries(client: Any) -> int:
    stats = getattr(client, "stats", None)  # the HTTP backend counts its retries
    return int(getattr(stats, "retries", 0))


@task(name="complete", cache_policy=COMPLETE_CACHE, persist_result=True)
def complete_task(
    completer: CompleterConfig,
    problems_ref: ShardRef,
    golden_ref: ShardRef | None,
    generated_ref: ShardRef | None,
    generated_out: str,
    out: str,
    serving: ServingConfig,
    reuse: bool = True,
) -> ShardRef:
    """Label every candidate of one shard: each candidate's next probe goes out as soon as its
    last one is back (`mshep.completion.label_solutions`). Without `generated_ref`, the shard
    is still being generated in this process: each question is labelled as soon as its
    candidates are handed over (`flows.handoff`)."""
    if reuse and (done := finished(out)):
        return done
    problems = read_records(problems_ref.path, Problem)
    golden = golden_answers(
        problems, read_records(golden_ref.path, KeyedSolution) if golden_ref else None
    )
    arriving = None
    if generated_ref is None and (handoff := handoff_for(generated_out)) is not None:
        arriving = Candidates(handoff, problems, golden)
        # Hold no share of an `endpoint_limit` while there is nothing to send: its generate
        # task then holds its own share already, so neither waits for the other for ever.
        handoff.wait()
    elif generated_ref is None and (generated_ref := finished(generated_out)) is None:
        raise RuntimeError(
            f"complete shard {problems_ref.shard + 1}: its generate shard is not done"
        )
    targets: list[LabelTarget] = []
    unlabelled: list[Failure] = []
    if generated_ref is not None:
        generated = read_records(generated_ref.path, KeyedSolution)
        targets, unlabelled = label_targets(problems, golden, generated)
    token = serving_token(serving)  # read here, never a task input
    with endpoint_slots(serving) as held, make_backend(held, token) as client:
        result = label_solutions(client, targets, completer, arriving)
    if lost := _lost_requests(result.tally, serving, Stage.COMPLETE, problems_ref):
        return failed(lost)
    # In the shard's question order, however the questions arrived.
    position = {problem.id: i for i, problem in enumerate(problems)}
    result.solutions.sort(key=lambda item: (position[item.problem_id], item.solution.index))
    failures = sorted(
        [*unlabelled, *result.failures], key=lambda f: position.get(f.problem_id or "", -1)
    )
    # `failures` here are per problem: exactly one for each problem left without a label.
    return finish_shard(
        Stage.COMPLETE,
        problems_ref.shard,
        out,
        result.solutions,
        problems=len(problems),
        items=len(result.solutions),
        failures=failures,
        usage=result.usage,
        rounds=result.rounds,
        retries=_retries(client),
        failed_requests=dict(result.tally.causes),
        resampled=result.resampled,
    )


class Outputs:
    """The run's output files, one per format and file type, appended as completion shards
    finish, in shard order (a shard that finishes early waits, as a reference, for those before
    it): when the last shard is back only the last few are left to write. One shard's rows are
    in memory at a time; the files are moved into place only by `close`, so a run that fails
    leaves no half dataset (`abort`), and an earlier run's dataset stays whole until then."""

    def __init__(self, config: RunConfig) -> None:
        layout = Layout.of(config)
        self.writers = {
            name: DatasetWriter(layout.format_dir(name), config.output, COLUMNS[name])
            for name in config.output.formats
        }
        self.dropped: dict[str, Counter[str]] = {name: Counter() for name in self.writers}
        self.tally = QualityTally()
        self.next = 0  # the next shard to append
        self.waiting: dict[int, ShardRef] = {}

    def add(self, index: int, ref: ShardRef) -> None:
        """Completion shard `index` is done: append it, and any after it already done."""
        if index >= self.next:
            self.waiting[index] = ref
        while self.next in self.waiting:
            labelled = read_records(self.waiting.pop(self.next).path, LabelledSolution)
            for name, writer in self.writers.items():
                out = format_rows(labelled, name)
                writer.write(out.rows)
                self.dropped[name].update(out.dropped)
            self.tally.add(labelled)
            self.next += 1

    def close(self, stages: dict[str, StageSummary]) -> dict[str, Any]:
        """Every file finished before any is moved into place: a failure while finishing
        leaves the earlier dataset whole, not half replaced."""
        for writer in self.writers.values():
            writer.finish()
        outputs = {name: writer.publish() for name, writer in self.writers.items()}
        return {
            "outputs": outputs,
            "rows_out": {name: writer.rows for name, writer in self.writers.items()},
            "rows_dropped": {name: dict(counts) for name, counts in self.dropped.items()},
            "labels": self.tally.label_counts(),
            "problems_labelled": len(self.tally.problems),
            "quality": self.tally.report(stages),
        }

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()  # after `close` there is nothing left to abort


@task(name="write outputs", cache_policy=NO_CACHE)
def write_task(
    outputs: Outputs, complete_refs: list[ShardRef], stages: dict[str, StageSummary]
) -> dict[str, Any]:
    """Append what the run has not yet appended (every shard, after a resume that found them
    all done), move the files into place, and the quality report. Runs in the flow's process
    (it is called, not submitted): `outputs` holds open files."""
    for index, ref in enumerate(complete_refs):
        outputs.add(index, ref)
    return outputs.close(stages)


@task(name="push to hub", retries=2, retry_delay_seconds=10)
def push_task(config: RunConfig, summary: RunSummary, card: str) -> str:
    """The token is read here, in the task, never passed to it: task inputs reach the API."""
    return push_dataset(config, summary, card, hub_token(config.output))
