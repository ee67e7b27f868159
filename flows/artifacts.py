"""Prefect: what the UI shows of a run, as artifacts. A progress bar per run, updated as shards
of each stage finish (`RunProgress`), and at the end two tables (step labels; rows not labelled)
and a markdown report (quality, requests and faults per stage, outputs, dataset card)
(`publish_report`).

Artifact calls never fail a run: every Prefect call is wrapped, and an error is logged as a
warning (the run's logger, else `mshep.artifacts`) and dropped. Outside a flow or task run they
do nothing: Prefect 3.9 deprecates artifacts without a run, and with no API configured a call
would start a temporary server. Only public config fields reach an artifact (models, M, N,
paths), with any `user:password@` cut out of URLs, never a token.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from typing import Any
from uuid import UUID

import httpx
import prefect.artifacts
from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext

from mshep.card import URL_CREDENTIALS, redact
from mshep.config import RunConfig
from mshep.summary import RunSummary

__all__ = ["RunProgress", "artifact_key", "publish_report"]

LOGGER = logging.getLogger("mshep.artifacts")
LABELS = ("good", "bad", "unknown")
MAX_FAILURES = 3  # failed progress calls in a row before RunProgress stops trying
DESCRIPTIONS = {
    "labels": "Step labels, steps by label source, first bad step",
    "not-labelled": "Input rows not labelled, by reason",
    "report": "Quality, requests and faults per stage, outputs, dataset card",
    "hub": "The dataset on the Hub",
}


def _in_run() -> bool:
    """Whether a flow or task run is under way here (artifacts then attach to it)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _warn(message: str, *args: Any) -> None:
    """A warning in the run's log when there is one, else in `mshep.artifacts`; never raises."""
    try:
        logger: Any = get_run_logger()
    except Exception:
        logger = LOGGER
    with contextlib.suppress(Exception):  # a failing log handler must not fail the run either
        logger.warning(message, *args)


class _Unreachable(Exception):
    """The Prefect API could not be reached, after its client's own retries (~1.5 s a call)."""


def _call(name: str, what: str, **kwargs: Any) -> Any:
    """`prefect.artifacts.<name>(**kwargs)`, synchronously (`_sync=True`: `async_dispatch` would
    hand an async flow a coroutine). None without a run, or after a warning when it fails;
    `_Unreachable` (after a warning) when the API cannot be reached."""
    if not _in_run():
        LOGGER.debug("no flow run: artifact %s not created", what)
        return None
    try:
        return getattr(prefect.artifacts, name)(**kwargs, _sync=True)
    except Exception as error:
        _warn("artifact %s not published: %s: %s", what, type(error).__name__, error)
        if isinstance(error, httpx.TransportError):
            raise _Unreachable from error
        return None


def _slug(text: str, parts: int = 2) -> str:
    """The last `parts` components of a name, path or URI (credentials and a data file's
    extension dropped) in key characters: `openai/gsm8k` → `openai-gsm8k`."""
    path = URL_CREDENTIALS.sub("", text).split("://", 1)[-1]
    tail = "/".join(path.rstrip("/").split("/")[-parts:])
    tail = re.sub(r"\.(jsonl|json|parquet|csv|txt)$", "", tail.lower())
    return re.sub(r"[^a-z0-9]+", "-", tail).strip("-")[:40].strip("-") or "x"


def artifact_key(config: RunConfig, kind: str) -> str:
    """`mshep-<output>-<dataset>-<kind>`: stable for a dataset and output (so the UI keeps each
    run's artifact in that key's history), lowercase letters, digits and dashes only."""
    output, dataset = _slug(config.output.path, 1), _slug(config.dataset.source)
    return f"mshep-{output}-{dataset}-{_slug(kind, 1)}"


class RunProgress:
    """One progress artifact per run, updated as shards finish in each stage.

    It has no key (the interface has no config to derive one from, and a key shared by runs
    would mix them on the Artifacts page); it shows on the flow run's Artifacts tab."""

    def __init__(self, totals: dict[str, int]) -> None:
        """`totals`: stage name → number of shard tasks. Creates the artifact at 0%."""
        self._totals = {str(stage): max(int(n), 0) for stage, n in totals.items()}
        self._done = dict.fromkeys(self._totals, 0)
        self._lock = threading.Lock()
        self._id: UUID | None = None
        self._failures = 0
        self._push(0.0)

    def shard_done(self, stage: str) -> None:
        """One more shard of `stage` finished: update the percentage and the description."""
        with self._lock:
            self._done[str(stage)] = self._done.get(str(stage), 0) + 1
            self._totals.setdefault(str(stage), 0)
        self._push(None)

    def describe(self) -> str:
        """'shards finished: generate 3/6, complete 1/6', as the artifact says."""
        with self._lock:
            return self._description()

    def _description(self) -> str:  # under the lock
        counts = ", ".join(f"{s} {self._done[s]}/{n}" for s, n in self._totals.items())
        return f"shards finished: {counts or '-'}"

    def finish(self) -> None:
        """The run is done: 100%."""
        self._push(100.0)

    def _push(self, percent: float | None) -> None:
        """Create the artifact on first use (or after a failed create), else update it; after
        `MAX_FAILURES` failed calls in a row, stop trying (each can cost seconds)."""
        try:
            with self._lock:
                if self._failures >= MAX_FAILURES or not _in_run():
                    return
                total = sum(self._totals.values())
                done = sum(min(n, self._totals[s]) for s, n in self._done.items())
                if percent is None:
                    percent = round(100.0 * done / total, 2) if total else 0.0
                update = {"progress": percent, "description": self._description()}
                try:
                    if self._id is None:
                        result = self._id = _call("create_progress_artifact", "progress", **update)
                    else:
                        update["artifact_id"] = self._id
                        result = _call("update_progress_artifact", "progress", **update)
                except _Unreachable:
                    result = None
                self._failures = 0 if result is not None else self._failures + 1
                if self._failures == MAX_FAILURES:
                    _warn("progress artifact: %d failed calls in a row, no more", MAX_FAILURES)
        except Exception as error:
            _warn("progress artifact not updated: %s: %s", type(error).__name__, error)


def label_table(summary: RunSummary) -> list[dict[str, Any]]:
    """Rows `{"group", "item", "count"}`: step labels, steps by label source, and solutions by
    the position of their first bad step (then "no bad step")."""
    labels = {name: summary.labels.get(name, 0) for name in LABELS}
    labels.update(summary.labels)
    rows = [{"group": "step label", "item": k, "count": n} for k, n in labels.items()]
    quality = summary.quality
    if quality is not None:
        rows += [
            {"group": "steps by label source", "item": k, "count": n}
            for k, n in quality.steps_by_source.items()
        ]
        rows += [
            {"group": "first bad step", "item": f"step {k}", "count": n}
            for k, n in sorted(quality.first_bad_step.items())
        ]
        none = quality.no_bad_step
        rows.append({"group": "first bad step", "item": "no bad step", "count": none})
    return rows


def unlabelled_table(summary: RunSummary) -> list[dict[str, Any]]:
    """Rows `{"reason", "rows"}`: input rows with no labelled solution, or one "none" row."""
    rows = [{"reason": redact(why), "rows": n} for why, n in summary.rows_not_labelled.items()]
    return rows or [{"reason": "none", "rows": 0}]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows), ""]


def _counts(counts: dict[str, int]) -> str:
    return "; ".join(f"{n} × {why}" for why, n in counts.items()) or "none"


STAGE_FIELDS = {"requests": "requests", "prompt_tokens": "prompt tokens"}
STAGE_FIELDS |= {"completion_tokens": "completion tokens", "retries": "retries"}
STAGE_FIELDS |= {"failed_requests": "failed requests (by cause)"}
STAGE_FIELDS |= {"resampled": "replies asked again", "reused_shards": "reused shards"}


def _stage_rows(summary: RunSummary) -> list[list[Any]]:
    values = [[getattr(s, f) for f in STAGE_FIELDS] for s in summary.stages.values()]
    return [
        [name, *(_counts(v) if isinstance(v, dict) else v for v in row)]
        for name, row in zip(summary.stages, values, strict=True)
    ]


def _output_rows(summary: RunSummary) -> list[list[Any]]:
    rows = []
    for name in dict.fromkeys([*summary.rows_out, *summary.outputs]):
        files = "<br>".join(f"`{uri}`" for uri in summary.outputs.get(name, [])) or "-"
        dropped = _counts(summary.rows_dropped.get(name, {}))
        rows.append([f"`{name}`", summary.rows_out.get(name, 0), dropped, files])
    return rows


def report_markdown(config: RunConfig, summary: RunSummary, card_path: str | None) -> str:
    """The run's report: what ran, quality, requests and faults per stage, outputs, the card."""
    gen, comp = config.generator, config.completer
    quality = summary.quality.lines() if summary.quality is not None else ["no quality report"]
    hub_url = getattr(summary, "hub_url", None)
    parts = [
        f"# mshep: `{config.dataset.source}` → `{config.output.path}`",
        "",
        f"Generator `{gen.model}` (M = {gen.M}), completer `{comp.model}` (N = {comp.N}, "
        f"strategy `{comp.strategy}`). Rows in {summary.rows_in}, labelled "
        f"{summary.rows_labelled}, not labelled {sum(summary.rows_not_labelled.values())}; "
        f"wall time {summary.wall_time_s:.1f} s.",
        "",
        "## Quality",
        "",
        *(f"- {line}" for line in quality),
        "",
        "## Requests per stage",
        "",
        *_md_table(["stage", *STAGE_FIELDS.values()], _stage_rows(summary)),
        "## Outputs",
        "",
        *_md_table(["format", "rows", "dropped", "files"], _output_rows(summary)),
        "## Dataset card",
        "",
        f"`{card_path}`" if card_path else "No dataset card was written.",
        *(["", f"On the Hub: [{hub_url}]({hub_url})"] if hub_url else []),
    ]
    return redact("\n".join(parts) + "\n")


def publish_report(config: RunConfig, summary: RunSummary, card_path: str | None) -> None:
    """The end-of-run artifacts, keyed by `artifact_key`: tables `labels` and `not-labelled`,
    markdown `report`, and a link `hub` when the summary carries a `hub_url`. Never raises; stops
    at the first call that cannot reach the API."""
    try:
        where = redact(f"{config.dataset.source} → {config.output.path}")
        hub_url = getattr(summary, "hub_url", None)
        markdown = {"markdown": report_markdown(config, summary, card_path)}
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("create_table_artifact", "labels", {"table": label_table(summary)}),
            ("create_table_artifact", "not-labelled", {"table": unlabelled_table(summary)}),
            ("create_markdown_artifact", "report", markdown),
        ]
        if isinstance(hub_url, str) and hub_url:
            link = {"link": redact(hub_url), "link_text": "the dataset on the Hub"}
            calls.append(("create_link_artifact", "hub", link))
        for name, kind, content in calls:
            key = artifact_key(config, kind)
            _call(name, key, key=key, description=f"{DESCRIPTIONS[kind]}: {where}", **content)
    except _Unreachable:
        return
    except Exception as error:
        _warn("run report artifacts not published: %s: %s", type(error).__name__, error)
