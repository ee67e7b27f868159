"""Pure. What a run did: rows in and out, every row not labelled with its reason, label counts,
requests and tokens per stage, and what the labels cost (`QualityReport`). Built from the small
references the stage tasks return and, for the report, the labelled solutions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mshep.records import Failure, Hard, LabelledSolution, LabelSource, Stage, Usage
from mshep.shards import ShardRef


class StageSummary(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: dict[str, int] = Field(default_factory=dict)
    retries: int = Field(default=0, description="HTTP calls repeated after a retryable error.")
    failed_requests: dict[str, int] = Field(
        default_factory=dict,
        description="Requests that failed after their retries, by cause (within the allowed "
        "share; above it the shard fails).",
    )
    resampled: int = Field(
        default=0, description="Replies asked again because the first could not be read."
    )
    reused_shards: int = Field(
        default=0, description="Shards taken from an earlier run's cache; their usage is counted."
    )


COMPLETION_STAGE = Stage.COMPLETE.value


class QualityReport(BaseModel):
    """What labelling cost and what it gave: the figures for choosing a strategy and N."""

    model_config = ConfigDict(extra="forbid")
    solutions: int = 0
    steps: int = 0
    strategies: dict[str, int] = Field(default_factory=dict, description="Solutions by strategy.")
    requests: dict[str, int] = Field(default_factory=dict, description="Requests per stage.")
    completion_tokens: dict[str, int] = Field(
        default_factory=dict, description="Completion tokens per stage."
    )
    prefixes_evaluated: int = Field(default=0, description="Step prefixes rolled out.")
    rollouts_requested: int = Field(default=0, description="Rollouts asked for (N per prefix).")
    labels_known: int = Field(default=0, description="Step labels that are good or bad.")
    labels_per_1k_completion_tokens: float | None = Field(
        default=None,
        description="Known step labels per 1,000 completion tokens of the completion stage; "
        "None when it spent none (every candidate witnessed).",
    )
    labels_per_1k_tokens_overall: float | None = Field(
        default=None, description="The same per 1,000 completion tokens of every stage."
    )
    steps_by_source: dict[str, int] = Field(
        default_factory=dict, description="witness / search / rollouts / final_answer."
    )
    unknown_share: float = Field(default=0.0, description="Share of step labels unknown.")
    first_bad_step: dict[int, int] = Field(
        default_factory=dict, description="Solutions by 1-based position of their first bad step."
    )
    no_bad_step: int = Field(default=0, description="Solutions with no step labelled bad.")

    def lines(self) -> list[str]:
        by_source = ", ".join(f"{k} {v}" for k, v in self.steps_by_source.items())
        positions = ", ".join(f"{k}: {v}" for k, v in sorted(self.first_bad_step.items()))
        return [
            f"step labels {self.steps} ({self.unknown_share:.1%} unknown) by source: {by_source}",
            f"rollouts {self.rollouts_requested} from {self.prefixes_evaluated} prefixes; "
            f"labels per 1k completion tokens: {_per_1k(self.labels_per_1k_completion_tokens)} "
            f"({COMPLETION_STAGE}), {_per_1k(self.labels_per_1k_tokens_overall)} (all stages)",
            f"first bad step: {positions or '-'}; none {self.no_bad_step}",
        ]


def _per_1k(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _rate(labels: int, tokens: int) -> float | None:
    return round(1000 * labels / tokens, 3) if tokens else None


class QualityTally:
    """What the quality report counts, added shard by shard: the labelled solutions themselves
    are not kept (a 10,000-question run's would not fit the memory the run is allowed)."""

    def __init__(self) -> None:
        self.solutions = self.steps = self.known = self.prefixes = self.rollouts = 0
        self.strategies: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.firsts: Counter[int | None] = Counter()
        self.hard: Counter[str] = Counter()
        self.problems: set[str] = set()

    def add(self, labelled: Iterable[LabelledSolution]) -> None:
        for item in labelled:
            self.solutions += 1
            self.problems.add(item.problem_id)
            self.strategies[item.strategy] += 1
            self.firsts[item.first_bad_step] += 1
            for label in item.labels:
                self.steps += 1
                self.known += label.hard is not Hard.UNKNOWN
                self.prefixes += label.rollouts > 0
                self.rollouts += label.rollouts
                self.sources[label.source.value] += 1
                self.hard[label.hard.value] += 1

    def label_counts(self) -> dict[str, int]:
        return {hard.value: self.hard.get(hard.value, 0) for hard in Hard}

    def report(self, stages: Mapping[str, StageSummary]) -> QualityReport:
        """`stages`: the per-stage summaries (the completion stage named "complete")."""
        complete = stages.get(COMPLETION_STAGE, StageSummary())
        known = self.known
        return QualityReport(
            solutions=self.solutions,
            steps=self.steps,
            strategies=dict(self.strategies),
            requests={name: stage.requests for name, stage in stages.items()},
            completion_tokens={name: stage.completion_tokens for name, stage in stages.items()},
            prefixes_evaluated=self.prefixes,
            rollouts_requested=self.rollouts,
            labels_known=known,
            labels_per_1k_completion_tokens=_rate(known, complete.completion_tokens),
            labels_per_1k_tokens_overall=_rate(
                known, sum(stage.completion_tokens for stage in stages.values())
            ),
            steps_by_source={s.value: self.sources.get(s.value, 0) for s in LabelSource},
            unknown_share=round((self.steps - known) / self.steps, 6) if self.steps else 0.0,
            first_bad_step={k: v for k, v in self.firsts.items() if k is not None},
            no_bad_step=self.firsts.get(None, 0),
        )


def quality_report(
    labelled: Iterable[LabelledSolution], stages: Mapping[str, StageSummary]
) -> QualityReport:
    """The report of a run from every labelled solution at once (`QualityTally` adds them up)."""
    tally = QualityTally()
    tally.add(labelled)
    return tally.report(stages)


class RunSummary(BaseModel):
    rows_in: int
    rows_labelled: int = Field(description="Input rows with at least one labelled solution.")
    rows_not_labelled: dict[str, int] = Field(
        default_factory=dict, description="Input rows with no labelled solution, by reason."
    )
    solutions_generated: int = 0
    solutions_labelled: int = 0
    rows_out: dict[str, int] = Field(default_factory=dict, description="Rows written per format.")
    rows_dropped: dict[str, dict[str, int]] = Field(default_factory=dict)
    labels: dict[str, int] = Field(default_factory=dict, description="Step labels by value.")
    stages: dict[str, StageSummary] = Field(default_factory=dict)
    labelling_rounds: int = 0
    outputs: dict[str, list[str]] = Field(default_factory=dict)
    wall_time_s: float = 0.0
    quality: QualityReport | None = None
    checks: list[str] = Field(
        default_factory=list, description="What the checks before the run found (endpoints, rows)."
    )
    engines: list[dict[str, Any]] = Field(
        default_factory=list,
        description="vllm: each engine's counters (loads, batches, tokens, prefix-cache hits).",
    )

    def lines(self) -> list[str]:
        """A short human report for logs and the CLI."""
        out = [
            f"rows in {self.rows_in}, labelled {self.rows_labelled}, "
            f"not labelled {sum(self.rows_not_labelled.values())}",
            f"solutions generated {self.solutions_generated}, labelled {self.solutions_labelled}",
            "labels " + ", ".join(f"{k} {v}" for k, v in sorted(self.labels.items())),
        ]
        out += [f"  not labelled: {n} × {why}" for why, n in self.rows_not_labelled.items()]
        for name, count in self.rows_out.items():
            dropped = self.rows_dropped.get(name, {})
            why = "; ".join(f"{n} × {reason}" for reason, n in dropped.items())
            out.append(f"{name}: {count} rows" + (f" (dropped {why})" if why else ""))
        for name, stage in self.stages.items():
            out.append(
                f"{name}: {stage.requests} requests, {stage.prompt_tokens} prompt + "
                f"{stage.completion_tokens} completion tokens"
                + (f" ({stage.reused_shards} shards reused)" if stage.reused_shards else "")
            )
            faults = [f"{stage.retries} retries"] if stage.retries else []
            faults += [f"{n} failed: {cause}" for cause, n in stage.failed_requests.items()]
            faults += [f"{stage.resampled} unreadable replies asked again"] * bool(stage.resampled)
            if name != Stage.COMPLETE.value:  # its failures are the rows not labelled, above
                faults += [f"{n} solutions lost: {why}" for why, n in stage.failures.items()]
            if faults:
                out.append(f"  {name} faults: " + "; ".join(faults))
        if self.quality is not None:
            out += self.quality.lines()
        out += [engine_line(engine) for engine in self.engines]
        out.append(f"wall time {self.wall_time_s:.1f} s")
        return out


def engine_line(engine: dict[str, Any]) -> str:
    """`engine <name>: loaded 1× in 52.1 s, 12 batches, 3400 requests, prefix cache 78%`."""
    name, get = engine["name"], engine.get
    if "error" in engine:
        return f"engine {name}: {engine['error']}"
    prompt = get("prompt_tokens") or 0
    cached = f", prefix cache {get('cached_prompt_tokens', 0) / prompt:.0%}" if prompt else ""
    return (
        f"engine {name}: loaded {get('loads', 0)}× in {get('load_s', 0)} s, "
        f"{get('batches', 0)} batches, {get('requests', 0)} requests{cached}"
    )


def stage_summary(refs: Iterable[ShardRef]) -> StageSummary:
    usage, failures, failed_requests = Usage(), Counter[str](), Counter[str]()
    retries = resampled = 0
    for ref in refs:
        usage += ref.usage
        failures.update(f.reason for f in ref.failures)
        failed_requests.update(ref.failed_requests)
        retries += ref.retries
        resampled += ref.resampled
    return StageSummary(
        requests=usage.requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        failures=dict(failures),
        retries=retries,
        failed_requests=dict(failed_requests),
        resampled=resampled,
    )


def count_reasons(failures: Iterable[Failure]) -> dict[str, int]:
    return dict(Counter(f"{failure.stage}: {failure.reason}" for failure in failures))
