"""The run's artifacts: progress, label tables and the report, read back through the Prefect API;
and the rule that artifact calls never fail a run nor carry a secret."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

import flows.artifacts as artifacts
from flows.artifacts import RunProgress, artifact_key, publish_report, report_markdown
from mshep.config import DatasetConfig, OutputConfig, RunConfig, ServingConfig
from mshep.summary import QualityReport, RunSummary, StageSummary

TOKEN = "hf_artifactsSecret7d3c9b1e0f"
URL_PASSWORD = "pw-artifacts-5e8a"
KEY = re.compile(r"^[a-z0-9-]+$")
CREATORS = [
    "create_progress_artifact",
    "update_progress_artifact",
    "create_table_artifact",
    "create_markdown_artifact",
    "create_link_artifact",
]


class HubSummary(RunSummary):
    """A summary that carries the Hub URL of its push (as the flow's result does)."""

    hub_url: str | None = None


def make_config(output: str = "gsm8k-prm") -> RunConfig:
    return RunConfig(
        dataset=DatasetConfig(source="openai/gsm8k"),
        serving=ServingConfig(base_url=f"http://user:{URL_PASSWORD}@127.0.0.1:8000/v1"),
        output=OutputConfig(path=output),
    )


def make_summary() -> RunSummary:
    return RunSummary(
        rows_in=5,
        rows_labelled=3,
        rows_not_labelled={"golden: no golden answer": 1, "load: empty question": 1},
        solutions_generated=12,
        solutions_labelled=9,
        rows_out={"math_shepherd": 8, "trl": 8, "raw": 9},
        rows_dropped={"math_shepherd": {"a step's label is unknown": 1}, "trl": {}, "raw": {}},
        labels={"good": 21, "bad": 7, "unknown": 2},
        stages={
            "generate": StageSummary(requests=5, prompt_tokens=1234, completion_tokens=5678),
            "complete": StageSummary(
                requests=40,
                prompt_tokens=98765,
                completion_tokens=43210,
                retries=3,
                failed_requests={f"timeout at http://user:{URL_PASSWORD}@127.0.0.1/v1": 2},
                resampled=1,
                reused_shards=1,
            ),
        },
        outputs={
            "math_shepherd": ["gsm8k-prm/math_shepherd/data.parquet"],
            "trl": ["gsm8k-prm/trl/data.parquet"],
            "raw": ["gsm8k-prm/raw/data.parquet", "gsm8k-prm/raw/data.jsonl"],
        },
        quality=QualityReport(
            solutions=9,
            steps=30,
            steps_by_source={"rollouts": 12, "final_answer": 9, "witness": 6, "search": 3},
            unknown_share=0.066667,
            first_bad_step={3: 2, 1: 1},
            no_bad_step=6,
        ),
    )


@pytest.mark.slow
def test_a_run_shows_progress_label_tables_and_report(prefect_harness: None) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    config, summary = make_config(), make_summary()

    @flow(name="mshep-artifacts-test")
    def tiny() -> str:
        progress = RunProgress({"generate": 2, "complete": 2})
        for stage in ("generate", "generate", "complete", "complete"):
            progress.shard_done(stage)
        progress.finish()
        publish_report(config, summary, "gsm8k-prm/README.md")
        return str(flow_run.id)

    run_id = UUID(tiny())
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    by_type: dict[str, list[Any]] = {}
    for artifact in found:
        by_type.setdefault(str(artifact.type), []).append(artifact)
    assert sorted(by_type) == ["markdown", "progress", "table"]

    (progress,) = by_type["progress"]
    assert progress.data == 100.0
    assert progress.description == "shards finished: generate 2/2, complete 2/2"

    tables = {a.key: json.loads(a.data) for a in by_type["table"]}
    assert set(tables) == {artifact_key(config, "labels"), artifact_key(config, "not-labelled")}
    labels = {(r["group"], r["item"]): r["count"] for r in tables[artifact_key(config, "labels")]}
    assert {k: labels["step label", k] for k in ("good", "bad", "unknown")} == {
        "good": 21,
        "bad": 7,
        "unknown": 2,
    }
    assert labels["steps by label source", "witness"] == 6
    assert labels["first bad step", "step 1"] == 1 and labels["first bad step", "step 3"] == 2
    assert labels["first bad step", "no bad step"] == 6
    assert tables[artifact_key(config, "not-labelled")] == [
        {"reason": "golden: no golden answer", "rows": 1},
        {"reason": "load: empty question", "rows": 1},
    ]

    (report,) = by_type["markdown"]
    assert report.key == artifact_key(config, "report")
    assert "retries" in report.data and "| complete | 40 | 98765 | 43210 | 3 |" in report.data
    assert "`gsm8k-prm/README.md`" in report.data
    assert "gsm8k-prm/raw/data.jsonl" in report.data
    assert URL_PASSWORD not in report.data


def test_label_and_unlabelled_tables_have_one_shape() -> None:
    rows = artifacts.label_table(make_summary())
    assert all(set(row) == {"group", "item", "count"} for row in rows)
    assert [r["item"] for r in rows if r["group"] == "first bad step"] == [
        "step 1",
        "step 3",
        "no bad step",
    ]
    bare = RunSummary(rows_in=1, rows_labelled=1, labels={"good": 3})
    assert [(r["item"], r["count"]) for r in artifacts.label_table(bare)] == [
        ("good", 3),
        ("bad", 0),
        ("unknown", 0),
    ]
    assert artifacts.unlabelled_table(bare) == [{"reason": "none", "rows": 0}]


@pytest.mark.parametrize(
    "output",
    ["gsm8k-prm", "s3://AKIA:secret@bucket/runs/Out_1/", "/tmp/x/ü.parquet", "---", "a" * 300],
)
def test_keys_are_valid_stable_and_free_of_credentials(output: str) -> None:
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    config = make_config(output)
    for kind in ("labels", "not-labelled", "report", "hub"):
        key = artifact_key(config, kind)
        assert KEY.match(key) and raise_on_name_alphanumeric_dashes_only(key) == key
        assert key == artifact_key(make_config(output), kind) and "secret" not in key
        assert key.endswith(f"-{kind}") and len(key) <= 120


def raising(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("boom")


@pytest.fixture
def warned() -> Iterator[list[str]]:
    """The warnings `mshep.artifacts` logs (a handler of its own: Prefect's logging setup may
    replace the root handlers that `caplog` relies on)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("mshep.artifacts").addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger("mshep.artifacts").removeHandler(handler)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Prefect: artifact outside a run
def test_nothing_raises_when_the_api_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, warned: list[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    monkeypatch.setattr(artifacts, "_in_run", lambda: True)  # as if in a run: calls go out
    # Prefect's client retries a refused connection 3 times, 0.5 s and 1 s apart (httpcore's
    # backoff, not a setting): ~1.5 s a call. Shorter here; only the count matters.
    monkeypatch.setattr("httpcore._sync.connection.RETRIES_BACKOFF_FACTOR", 0.01, raising=False)
    started = time.monotonic()
    unreachable = {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(unreachable):
        progress = RunProgress({"generate": 2})
        for _ in range(5):
            progress.shard_done("generate")
        progress.finish()
        publish_report(make_config(), make_summary(), "gsm8k-prm/README.md")
    # Progress gives up after 3 failed calls, the report after its first: a dead API costs a
    # run seconds, not a minute per shard.
    assert time.monotonic() - started < 20
    labels = f"artifact {artifact_key(make_config(), 'labels')} not published: ConnectError"
    assert [m.split(":")[0] for m in warned] == [
        "artifact progress not published",
        "artifact progress not published",
        "artifact progress not published",
        "progress artifact",  # 3 failed calls in a row, no more
        labels.split(":")[0],  # then the report stops
    ]
    assert "ConnectError" in warned[0] and warned[-1].startswith(labels)


def test_nothing_raises_when_prefect_calls_raise(
    monkeypatch: pytest.MonkeyPatch, warned: list[str]
) -> None:
    import prefect.artifacts

    monkeypatch.setattr(artifacts, "_in_run", lambda: True)
    for name in CREATORS:
        monkeypatch.setattr(prefect.artifacts, name, raising)
    progress = RunProgress({"generate": 2, "complete": 0})
    progress.shard_done("generate")
    progress.shard_done("unheard-of")
    progress.finish()
    publish_report(make_config(), make_summary(), None)
    assert sum("boom" in m for m in warned) == 3 + 3  # progress gives up; the report tries all
    broken = make_summary()
    broken.labels = None  # type: ignore[assignment]  # a summary that cannot be read
    publish_report(make_config(), broken, None)
    assert "run report artifacts not published" in warned[-1]


def sent_artifacts(monkeypatch: pytest.MonkeyPatch, in_run: bool) -> list[dict[str, Any]]:
    """Replace Prefect's artifact calls with a recorder; returns what they were given."""
    import prefect.artifacts

    calls: list[dict[str, Any]] = []

    def record(**kwargs: Any) -> UUID:
        calls.append(kwargs)
        return UUID(int=len(calls))

    monkeypatch.setattr(artifacts, "_in_run", lambda: in_run)
    for name in CREATORS:
        monkeypatch.setattr(prefect.artifacts, name, record)
    return calls


def test_outside_a_run_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = sent_artifacts(monkeypatch, in_run=False)
    progress = RunProgress({"generate": 1})
    progress.shard_done("generate")
    progress.finish()
    publish_report(make_config(), make_summary(), "README.md")
    assert calls == []


def test_progress_is_created_once_then_updated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = sent_artifacts(monkeypatch, in_run=True)
    progress = RunProgress({"generate": 3, "complete": 1})
    progress.shard_done("generate")
    progress.shard_done("complete")
    progress.finish()
    assert [c["progress"] for c in calls] == [0.0, 25.0, 50.0, 100.0]
    assert [c.get("artifact_id") for c in calls] == [None] + [UUID(int=1)] * 3
    assert calls[2]["description"] == "shards finished: generate 1/3, complete 1/1"
    assert all(c["_sync"] is True for c in calls)  # never a coroutine, even in an async flow


def test_no_secret_reaches_an_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TOKEN + "-aws")
    calls = sent_artifacts(monkeypatch, in_run=True)
    config = make_config(f"s3://key:{URL_PASSWORD}@bucket/gsm8k-prm")
    summary = HubSummary(**make_summary().model_dump())
    summary.hub_url = f"https://user:{URL_PASSWORD}@hub.example/datasets/o/n"
    summary.outputs["raw"].append(f"s3://key:{URL_PASSWORD}@bucket/gsm8k-prm/raw/data.parquet")
    RunProgress({"generate": 1}).finish()
    publish_report(config, summary, f"s3://key:{URL_PASSWORD}@bucket/gsm8k-prm/README.md")
    sent = json.dumps(calls, default=str)
    assert TOKEN not in sent and URL_PASSWORD not in sent
    markdown = report_markdown(config, summary, "README.md")
    assert "***@bucket" in markdown and TOKEN not in markdown and URL_PASSWORD not in markdown
    assert [c["key"] for c in calls if "link" in c] == [artifact_key(config, "hub")]


@pytest.mark.slow
def test_progress_from_an_async_flow(prefect_harness: None) -> None:
    """Prefect's artifact functions hand an async flow a coroutine unless told `_sync=True`."""
    import asyncio

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    @flow(name="mshep-artifacts-async-test")
    async def tiny() -> str:
        progress = RunProgress({"complete": 4})
        progress.shard_done("complete")
        return str(flow_run.id)

    run_id = UUID(asyncio.run(tiny()))
    with get_client(sync_client=True) as client:
        (progress,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert (progress.type, progress.data, progress.key) == ("progress", 25.0, None)
    assert progress.description == "shards finished: complete 1/4"
