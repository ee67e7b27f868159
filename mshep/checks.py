"""Network and storage: the checks a run starts with (the flow's first task, and `mshep check`),
so that a bad endpoint, a missing token or a misnamed column is one clear message before any
model call, instead of a failed run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from mshep.backends import make_backend
from mshep.card import redact
from mshep.config import ModelStage, OutputConfig, RunConfig
from mshep.errors import DatasetError, OutputError, one_line
from mshep.io import remove, write_text
from mshep.loading import LoadedDataset, load_problems
from mshep.shards import Layout
from mshep.summary import count_reasons

TokenReader = Callable[[OutputConfig], str]


def used_stages(config: RunConfig) -> dict[str, ModelStage]:
    stages: dict[str, ModelStage] = {"generator": config.generator, "completer": config.completer}
    if config.golden.source == "model":
        stages = {"golden": config.golden, **stages}
    return stages


def check_backends(config: RunConfig) -> list[str]:
    seen: set[str] = set()
    lines = []
    for name, stage in used_stages(config).items():
        serving = config.serving.for_stage(name)
        where = redact(serving.base_url or "Hugging Face Inference")
        lines.append(f"{name}: {stage.model} via {serving.kind} ({where})")
        if serving.kind == "vllm":
            from mshep.backends.vllm import check_engine

            check_engine(serving, stage.model, f"{name}.model")
            lines[-1] = f"{name}: {stage.model} via vllm engines in Ray actors"
            continue
        key = serving.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        with make_backend(serving) as backend:
            check = getattr(backend, "check", None)
            if check is not None:
                check()
    return lines


SHOWN_REJECTIONS = 5  # rows listed by `check`; the counts by reason cover the rest


def check_dataset(config: RunConfig) -> str:
    """The dataset line, with a few unusable rows listed; DatasetError if no row is usable."""
    loaded = load_problems(config.dataset, need_reference=config.golden.source == "reference")
    return dataset_report(config, loaded)


def dataset_report(config: RunConfig, loaded: LoadedDataset) -> str:
    """What `check_dataset` says of rows already loaded (the flow loads them once, in its load
    task, and reports them there)."""
    rejected = count_reasons(loaded.rejected)
    why = "; ".join(f"{n} × {reason}" for reason, n in rejected.items())
    if not loaded.problems:
        first = loaded.rejected[0].detail if loaded.rejected else ""
        raise DatasetError(f"no usable row in {config.dataset.source!r}: {why} (first: {first})")
    line = f"dataset {config.dataset.source}: {loaded.rows_in} rows, {len(loaded.problems)} usable"
    if not rejected:
        return line
    lines = [f"{line}; {len(loaded.rejected)} not used: {why}"]
    lines += [f"  not used: {f.detail} ({f.reason})" for f in loaded.rejected[:SHOWN_REJECTIONS]]
    if len(loaded.rejected) > SHOWN_REJECTIONS:
        lines.append(f"  ... and {len(loaded.rejected) - SHOWN_REJECTIONS} more")
    return "\n".join(lines)


def _check_remote_output(config: RunConfig) -> None:
    probe = f"{Layout.of(config).work}/.write-check"
    try:  # the only sure test of a bucket and its keys is a write
        write_text(probe, "mshep\n")
        remove(probe)
    except Exception as error:  # fsspec and its backends raise many types
        cause = error.__cause__ if isinstance(error, OutputError) and error.__cause__ else error
        raise OutputError(
            f"cannot write to output.path {config.output.path!r}: {one_line(cause)}"
        ) from None


def _check_local_output(path: str) -> None:
    """Output goes in a directory: the nearest one that exists takes a file. A real write, since
    permission bits do not stop root and a read-only mount passes `os.access`."""
    nearest = Path(path).absolute()
    while not nearest.exists() and not nearest.is_symlink():
        nearest = nearest.parent
    if not nearest.is_dir():
        what = "is a file" if nearest.is_file() else "is not a directory"
        raise OutputError(
            f"cannot write to output.path {path!r}: {nearest} {what}; output.path names a "
            "directory (one folder per format, summary.json, README.md)"
        )
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as error:
        raise OutputError(
            f"cannot write to output.path {path!r}: cannot create a file in {nearest} "
            f"({one_line(error)})"
        ) from None


def check_output(config: RunConfig, hub_token: TokenReader) -> str:
    """The output can be written (a bucket that is missing or refuses the keys fails here, not
    after the first stage), and a Hub push has its token (`hub_token` reads it)."""
    path = Layout.of(config).root
    if "://" in path:
        _check_remote_output(config)
    else:
        _check_local_output(path)
    line = f"output {path}: writable"
    if config.output.push_to_hub:
        hub_token(config.output)
        visibility = "private" if config.output.private else "public"
        line += f"; push to Hub dataset {config.output.push_to_hub} ({visibility}), token found"
    return line


def preflight(config: RunConfig, hub_token: TokenReader, dataset: bool = True) -> str:
    """A short report of what will run; raises a `MshepError` naming the first problem found.
    `dataset=False`: the caller reads the dataset itself (`dataset_report`), once."""
    lines = check_backends(config)
    if dataset:
        lines.append(check_dataset(config))
    lines.append(check_output(config, hub_token))
    lines.append(
        f"M={config.generator.M}, N={config.completer.N}, strategy={config.completer.strategy}, "
        f"golden from {config.golden.source}, output {config.output.path}"
    )
    return "\n".join(lines)
