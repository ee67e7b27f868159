"""The dataset card: a Hub README with front matter (one config per output format) and a body
saying how the data was made (models, M, N, strategy, the config without secrets) and what the
run counted (rows, drops, labels, tokens, the quality report). Built from the config, which holds
only the *names* of secrets, and the run's summary."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Any

import yaml

from mshep.config import RunConfig
from mshep.summary import RunSummary

TAGS = ["process-reward-model", "math-shepherd", "prm", "math", "synthetic", "mshep"]
FORMAT_NOTES = {
    "math_shepherd": "`input`: question and steps, each followed by ' ки'; "
    "`label`: the same with ' +' / ' -' (as peiyi9979/Math-Shepherd)",
    "trl": "TRL stepwise supervision: `prompt`, `completions` (steps), `labels` (bool per step)",
    "raw": "everything: soft labels, rollout counts, label sources, first bad step, models, usage",
}
STRATEGY_NOTES = {
    "per_step": "N rollouts from every step prefix; hard and soft labels measured on every step "
    "(the paper's method)",
    "first_error": "a binary search for the first bad step of each candidate whose answer is "
    "wrong (about log2 of its steps prefixes rolled out): steps before it good, from it on bad; "
    "only probed steps have soft labels",
}
WITNESS_NOTE = (
    "on: a candidate whose own final answer is right has all steps good without rollouts "
    "(label source `witness`, no soft label)"
)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """Any `user:password@` in a URL cut out: a base URL may carry credentials even though
    tokens belong in the environment."""
    return URL_CREDENTIALS.sub("***@", text)


def repo_paths(summary: RunSummary) -> dict[str, list[str]]:
    """Each format's files as they lie in the repo: parquet when written (typed, compact),
    else jsonl — one type per config, as `datasets` reads one builder per config."""
    paths = {}
    for name, uris in summary.outputs.items():
        names = sorted(posixpath.basename(uri) for uri in uris)
        chosen = [n for n in names if n.endswith(".parquet")] or names
        if chosen:
            paths[name] = [f"{name}/{n}" for n in chosen]
    return paths


def dataset_card(config: RunConfig, summary: RunSummary) -> str:
    """README.md for the Hub: front matter `datasets` reads (one config per format), then how
    the data was made and what the run counted."""
    parts = [
        "---",
        yaml.safe_dump(_front_matter(summary), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {config.output.push_to_hub or 'Math-Shepherd PRM dataset'}",
        "",
        "Process-reward-model training data made with mshep the Math-Shepherd way "
        "([Wang et al., 2023](https://arxiv.org/abs/2312.08935)): completer rollouts continue a "
        "candidate solution from a step; the step is good ('+') if any valid rollout reaches the "
        "golden answer (hard label), and its soft label is the share of valid rollouts that do. "
        "Failed rollouts (errors, no readable answer, truncated) count as neither; a step with "
        "no valid rollout is unknown, and the training formats leave its solution out.",
        "",
        *_usage(config, summary),
        *_generation(config),
        *_labels(summary),
        *_rows(summary),
        *_stages(summary),
        *_quality(summary),
        "## Configuration",
        "",
        "The run's config (it holds the names of environment variables and Prefect blocks "
        "that hold secrets, never their values):",
        "",
        "```yaml",
        public_config(config),
        "```",
    ]
    return "\n".join(parts) + "\n"


def _front_matter(summary: RunSummary) -> dict[str, Any]:
    paths = repo_paths(summary)
    configs: list[dict[str, Any]] = [
        {"config_name": name, "data_files": [{"split": "train", "path": files}]}
        for name, files in paths.items()
    ]
    if configs:
        configs[0]["default"] = True
    meta: dict[str, Any] = {"tags": TAGS}
    rows = max(summary.rows_out.values(), default=0)
    if rows:
        meta["size_categories"] = [_size_category(rows)]
    meta["configs"] = configs
    return meta


def _size_category(rows: int) -> str:
    """The Hub's size bucket: n<1K, 1K<n<10K, and so on."""
    bounds = ["", "1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    power = min(max(len(str(rows)) - 3, 0), len(bounds) - 2)  # 10**(power+3) > rows
    low, high = bounds[power], bounds[power + 1]
    return f"{low}<n<{high}" if low else f"n<{high}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        text = f"{value:,}" if type(value) is int else _plain(value)  # counts: 98,765
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _usage(config: RunConfig, summary: RunSummary) -> list[str]:
    paths = repo_paths(summary)
    if not paths:
        return ["No rows were written.", ""]
    repo = config.output.push_to_hub or "<repo>"
    first = next(iter(paths))
    rows = [
        [f"`{name}`", summary.rows_out.get(name, 0), FORMAT_NOTES.get(name, "")] for name in paths
    ]
    load = f'`datasets.load_dataset("{repo}", "{first}", split="train")`'
    return ["## Configurations", "", *_table(["config", "rows", "a row"], rows), load, ""]


def _generation(config: RunConfig) -> list[str]:
    golden, generator, completer = config.golden, config.generator, config.completer
    data = config.dataset
    source = f"`{data.source}`" + (f" ({data.name}, split {data.split})" if data.name else "")
    if golden.source == "model":
        answers = (
            f"`{golden.model}` solves each question (temperature {golden.sampling.temperature})"
        )
    else:
        answers = f"the dataset's reference answers (column `{data.answer_column}`)"
    witness = getattr(completer, "witness", False)
    rows: list[list[Any]] = [
        ["questions", source + (f", first {data.limit} rows" if data.limit else "")],
        ["golden answers", answers],
        ["generator", f"`{generator.model}`, M = {generator.M} candidate solutions per question"],
        ["completer", f"`{completer.model}`, N = {completer.N} rollouts per step prefix"],
        ["strategy", f"`{completer.strategy}`: {STRATEGY_NOTES.get(completer.strategy, '')}"],
        ["witness rule", WITNESS_NOTE if witness else "off: every candidate is rolled out"],
        ["difficulty filter", "on" if getattr(completer, "difficulty_filter", False) else "off"],
        ["generator sampling", generator.sampling.model_dump(exclude_none=True)],
        ["completer sampling", completer.sampling.model_dump(exclude_none=True)],
    ]
    return ["## How it was generated", "", *_table(["", ""], rows)]


def _labels(summary: RunSummary) -> list[str]:
    total = sum(summary.labels.values())
    rows = [
        [label, n, f"{100 * n / total:.1f}%" if total else "–"]
        for label, n in summary.labels.items()
    ]
    return ["## Step labels", "", *_table(["label", "steps", "share"], [*rows, ["all", total, ""]])]


def _rows(summary: RunSummary) -> list[str]:
    counts = [
        ["questions in", summary.rows_in],
        ["questions with a labelled solution", summary.rows_labelled],
        *[[f"not labelled: {why}", n] for why, n in summary.rows_not_labelled.items()],
        ["solutions generated", summary.solutions_generated],
        ["solutions labelled", summary.solutions_labelled],
    ]
    written = [
        [f"`{name}`", n, _reasons(summary.rows_dropped.get(name, {}))]
        for name, n in summary.rows_out.items()
    ]
    return [
        "## Rows",
        "",
        *_table(["", "count"], counts),
        *_table(["config", "rows", "solutions left out (why)"], written),
    ]


def _stages(summary: RunSummary) -> list[str]:
    rows = [
        [
            name,
            s.requests,
            s.prompt_tokens,
            s.completion_tokens,
            _reasons(s.failures),
            s.retries,
            _reasons(s.failed_requests),
            s.resampled,
        ]
        for name, s in summary.stages.items()
    ]
    header = ["stage", "requests", "prompt tokens", "completion tokens", "failures"]
    header += ["retries", "failed requests", "unreadable replies asked again"]
    return ["## Requests and tokens per stage", "", *_table(header, rows)]


def _reasons(counts: dict[str, int]) -> str:
    return "; ".join(f"{n} × {why}" for why, n in counts.items()) or "none"


def _quality(summary: RunSummary) -> list[str]:
    """The summary's quality report, when the run made one, rendered field by field from its
    dump (with each field's description), so new fields show without a change here."""
    report = getattr(summary, "quality", None)
    if report is None:
        return []
    fields = getattr(type(report), "model_fields", {})
    rows = [
        [f"`{key}`", _plain(value), getattr(fields.get(key), "description", None) or ""]
        for key, value in report.model_dump(mode="json").items()
    ]
    return ["## Quality report", "", *_table(["figure", "value", "meaning"], rows)]


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value) or "–"
    return "–" if value is None else str(value)


def public_config(config: RunConfig) -> str:
    """The config as YAML, with any `user:password@` cut out of URLs: a base URL may carry
    credentials even though tokens belong in the environment."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return redact(text).rstrip()
