"""Storage: the one owner of shards: their names, digests, keys, where they live, when one is done.

A run cuts its questions into shards of `execution.shard_size`. Each stage writes one file per
shard, `<output>/.work/<stage>-<key>/shard-<n>-<questions digest>.jsonl`, where the stage key
covers exactly what the stage's output depends on:

- the settings of the stage and of the stages it reads (model, sampling, prompts, M/N, strategy;
  never where or how the models are served, nor where the tasks run),
- the mshep version and a digest of the library code the stage runs (parsing, answers,
  labelling, prompts, ...), so an upgrade that changes labelling recomputes the completion shards
  and one that does not resumes them.

A shard is done when its data file and, next to it, its reference (`<file>.ref.json`: the
`ShardRef` its task returned) both exist: each is written whole or not at all, the reference
last. A stage task whose shard is done returns that reference without asking the model anything,
whether or not Prefect's own cache still has its result (a changed task source, another result
storage, a lost results folder). The flow's task cache keys include the output path, so they
inherit all of the above.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

import mshep
from mshep.config import RunConfig
from mshep.records import Failure, Problem, Stage, Usage

# The library modules whose code decides each stage's output (`tests/test_shards.py` checks that
# each stage's imports are covered). `write` is not cached (it reruns every time), so the formats
# need no digest; how replies are fetched (backends.http*) is serving, not computing.
_SOLVE = ("records", "prompts", "parsing", "batches", "failures", "backends.base")
STAGE_CODE: dict[Stage, tuple[str, ...]] = {
    Stage.LOAD: ("records", "parsing", "references", "loading"),
    Stage.GOLDEN: (*_SOLVE, "generation"),
    Stage.GENERATE: (*_SOLVE, "generation"),
    Stage.COMPLETE: (*_SOLVE, "completion", "answers", "labelling"),
}
# Answer checking is math-verify's too: its version is part of the completion key.
STAGE_PACKAGES: dict[Stage, tuple[str, ...]] = {Stage.COMPLETE: ("math-verify",)}


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
    retries: int = Field(default=0, description="HTTP calls repeated after a retryable error.")
    failed_requests: dict[str, int] = Field(
        default_factory=dict, description="Requests failed after their retries, by cause."
    )
    resampled: int = Field(default=0, description="Replies asked again: the first was unreadable.")


@functools.cache
def code_digest(stage: Stage) -> str:
    """The mshep version and the source of every module `stage` runs, hashed."""
    sha = hashlib.sha256(mshep.__version__.encode())
    for package in STAGE_PACKAGES.get(stage, ()):
        sha.update(f"{package}=={importlib.metadata.version(package)}".encode())
    for name in STAGE_CODE[stage]:
        spec = importlib.util.find_spec(f"mshep.{name}")
        if spec is None or spec.origin is None:  # cannot happen in an installed mshep
            raise RuntimeError(f"mshep.{name} has no source file to digest")
        sha.update(name.encode() + b"\0" + Path(spec.origin).read_bytes())
    return sha.hexdigest()[:16]


def fingerprint(*parts: Any) -> str:
    """A short, stable key of settings (pydantic models by their JSON, the rest by repr)."""
    text = "|".join(
        p.model_dump_json() if hasattr(p, "model_dump_json") else repr(p) for p in parts
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def stage_keys(config: RunConfig) -> dict[str, str]:
    """Each stage's key covers its own settings and code and those of the stages it reads."""
    load = fingerprint(
        config.dataset,
        config.golden.source,
        config.execution.shard_size,
        code_digest(Stage.LOAD),
    )
    golden = fingerprint(load, config.golden, code_digest(Stage.GOLDEN))
    generate = fingerprint(load, config.generator, code_digest(Stage.GENERATE))
    reads = golden if config.golden.source == "model" else "reference"
    complete = fingerprint(reads, generate, config.completer, code_digest(Stage.COMPLETE))
    return {
        Stage.LOAD: load,
        Stage.GOLDEN: golden,
        Stage.GENERATE: generate,
        Stage.COMPLETE: complete,
    }


@dataclass(frozen=True)
class Layout:
    """Where a run's files live under its output path (a directory or an s3:// prefix)."""

    root: str

    @classmethod
    def of(cls, config: RunConfig) -> Layout:
        return cls(config.output.path.rstrip("/"))

    @property
    def work(self) -> str:
        return f"{self.root}/.work"

    @property
    def results(self) -> str:
        """Prefect's task results (small `ShardRef`s named by cache key), by default."""
        return f"{self.work}/results"

    @property
    def summary(self) -> str:
        return f"{self.root}/summary.json"

    @property
    def card(self) -> str:
        return f"{self.root}/README.md"

    def format_dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def shard(self, stage: Stage, key: str, shard: int, questions_digest: str) -> str:
        return f"{self.work}/{stage.value}-{key}/shard-{shard:05d}-{questions_digest[:12]}.jsonl"


class ShardPaths:
    """Where a run's stages write their shards: keyed by the stage's settings and code and the
    shard's questions, so runs with other settings or code never overwrite what this one resumes
    from. The keys are computed once per run, not once per shard."""

    def __init__(self, config: RunConfig) -> None:
        self.layout, self.keys = Layout.of(config), stage_keys(config)

    def __call__(self, stage: Stage, shard: int, questions_digest: str) -> str:
        return self.layout.shard(stage, self.keys[stage], shard, questions_digest)


def ref_path(path: str) -> str:
    return f"{path}.ref.json"


def finished(path: str) -> ShardRef | None:
    """The reference of a done shard at `path`, or None if it is not done."""
    from mshep.io import exists, read_records

    if not (exists(ref_path(path)) and exists(path)):
        return None
    refs = read_records(ref_path(path), ShardRef)
    return refs[0] if len(refs) == 1 and refs[0].path == path else None


def is_done(path: str) -> bool:
    return finished(path) is not None


def finish_shard(
    stage: Stage, shard: int, path: str, records: Iterable[BaseModel] | str, **counts: Any
) -> ShardRef:
    """Write a shard's data, then its reference (each atomically): from then on it is done."""
    from mshep.io import write_records

    sha = write_records(path, records)
    ref = ShardRef(stage=stage.value, shard=shard, path=path, digest=sha, **counts)
    write_records(ref_path(path), [ref])
    return ref


def write_question_shards(config: RunConfig, problems: list[Problem]) -> list[ShardRef]:
    """Cut the questions into shards of `execution.shard_size` and write each one, named by its
    content: an unchanged shard keeps its path and digest, so the stages after it resume."""
    from mshep.io import digest, records_text

    size, paths = config.execution.shard_size, ShardPaths(config)
    refs = []
    for shard, start in enumerate(range(0, len(problems), size)):
        text = records_text(problems[start : start + size])
        path = paths(Stage.LOAD, shard, digest(text))
        count = min(size, len(problems) - start)
        refs.append(finish_shard(Stage.LOAD, shard, path, text, problems=count))
    return refs


def finished_counts(config: RunConfig) -> dict[str, int]:
    """How many shards of each model stage are done, for this config's keys."""
    import fsspec

    layout, keys = Layout.of(config), stage_keys(config)
    counts = {}
    for stage in (Stage.GOLDEN, Stage.GENERATE, Stage.COMPLETE):
        fs, _, (base,) = fsspec.get_fs_token_paths(f"{layout.work}/{stage.value}-{keys[stage]}")
        fs.invalidate_cache()
        found = fs.glob(f"{base}/shard-*.jsonl.ref.json") if fs.exists(base) else []
        if found or stage is not Stage.GOLDEN:
            counts[stage.value] = len(found)
    return counts
