"""Pure. What a run did: rows in and out, every row not labelled with its reason, label counts,
requests and tokens per stage. Built from the small references the stage tasks return."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

from mshep.records import Failure, Hard, LabelledSolution, Usage


class ShardRef(BaseModel):
    """What a stage task returns: where its shard data is, and counts — never the data itself."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    shard: int
    path: str
    digest: str = Field(default="", description="sha256 of the shard file: content in cache keys.")
    problems: int = 0
    items: int = 0
    failures: list[Failure] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    rounds: int = 0


class StageSummary(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failures: dict[str, int] = Field(default_factory=dict)


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
            )
        out.append(f"wall time {self.wall_time_s:.1f} s")
        return out


def stage_summary(refs: Iterable[ShardRef]) -> StageSummary:
    usage, failures = Usage(), Counter[str]()
    for ref in refs:
        usage += ref.usage
        failures.update(f.reason for f in ref.failures)
    return StageSummary(
        requests=usage.requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        failures=dict(failures),
    )


def label_counts(items: Iterable[LabelledSolution]) -> dict[str, int]:
    counts = Counter(label.hard.value for item in items for label in item.labels)
    return {hard.value: counts.get(hard.value, 0) for hard in Hard}


def count_reasons(failures: Iterable[Failure]) -> dict[str, int]:
    return dict(Counter(f"{failure.stage}: {failure.reason}" for failure in failures))
