"""Storage: datasets in (Hub, local files, s3://) and out, and shard files on fsspec paths. What
cannot be read is a `DatasetError`, what cannot be written an `OutputError`, each one line.

Heavy libraries (datasets, fsspec) are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from mshep.config import DatasetConfig, OutputConfig
from mshep.errors import DatasetError, OutputError
from mshep.parsing import ParseFailure
from mshep.records import Failure, Problem
from mshep.references import parse_reference_answer

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SUPPORTED = ", ".join(FILE_BUILDERS)
R = TypeVar("R", bound=BaseModel)


@dataclass
class LoadedDataset:
    rows_in: int
    problems: list[Problem] = field(default_factory=list)
    rejected: list[Failure] = field(default_factory=list)


def _is_local(source: str) -> bool:
    """A path on this machine, not a Hub name ("openai/gsm8k", "AI-MO/NuminaMath-1.5") or URI."""
    if "://" in source:
        return False
    path = Path(source)
    looks_like_a_path = path.is_absolute() or source.startswith(("./", "../"))
    return looks_like_a_path or path.suffix.lower() in FILE_BUILDERS or path.exists()


def _has_no_rows(path: Path) -> bool:
    """A local file with no row in it, on which datasets fails with an unclear error."""
    size = path.stat().st_size
    if path.suffix.lower() == ".parquet" and size > 0:
        import pyarrow.parquet as pq

        try:
            return bool(pq.ParquetFile(path).metadata.num_rows == 0)
        except Exception:  # not a parquet file: datasets will say so
            return False
    return size == 0 or (size < 65_536 and not path.read_bytes().strip())


def _no_rows(cfg: DatasetConfig) -> DatasetError:
    where = cfg.source if _is_local(cfg.source) else f"{cfg.source!r} (split {cfg.split!r})"
    return DatasetError(f"dataset {where} has no rows")


def one_line(error: BaseException) -> str:
    """An error as one line: its type and message (fsspec and botocore messages span lines)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _describe(error: BaseException) -> str:
    """A loading error and its cause (datasets often wraps the real one), on one line."""
    parts = [" ".join(str(error).split()) or type(error).__name__]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in str(error):
        parts.append(one_line(cause))
    return ": ".join(parts)


def _check_local_file(cfg: DatasetConfig) -> None:
    """A local source is one readable data file of a supported type, with rows."""
    path = Path(cfg.source)
    if path.is_dir():
        raise DatasetError(
            f"dataset.source {cfg.source!r} is a directory: name a data file in it "
            f"({SUPPORTED}), a Hub dataset or an s3:// URI"
        )
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {cfg.source}")
    if path.suffix.lower() not in FILE_BUILDERS:
        kind = f"type {path.suffix!r}" if path.suffix else "type (no suffix)"
        raise DatasetError(
            f"dataset.source {cfg.source!r}: unsupported file {kind}; supported: {SUPPORTED}"
        )
    try:
        if _has_no_rows(path):
            raise _no_rows(cfg)
    except OSError as error:  # unreadable (permissions): datasets would give a long traceback
        raise DatasetError(f"cannot read dataset file {cfg.source}: {one_line(error)}") from None


def _read_dataset(cfg: DatasetConfig) -> Any:
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars are noise in a CLI check
    suffix = Path(cfg.source).suffix.lower()
    if _is_local(cfg.source):
        _check_local_file(cfg)
    try:
        with _quiet("datasets"):
            if suffix in FILE_BUILDERS:
                builder = FILE_BUILDERS[suffix]
                return datasets.load_dataset(builder, data_files=cfg.source, split="train")
            return datasets.load_dataset(cfg.source, cfg.name, split=cfg.split)
    except Exception as error:  # datasets raises many types; the user needs the message only
        if "corresponds to no data" in str(error):  # a header, or a split, without rows
            raise _no_rows(cfg) from error
        raise DatasetError(f"cannot load dataset {cfg.source!r}: {_describe(error)}") from error


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """datasets logs a failed load with its traceback, then raises: the user gets the error."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_columns(columns: Sequence[str], cfg: DatasetConfig) -> None:
    wanted = {
        "dataset.question_column": cfg.question_column,
        "dataset.answer_column": cfg.answer_column,
        "dataset.id_column": cfg.id_column,
    }
    for setting, column in wanted.items():
        if column is not None and column not in columns:
            raise DatasetError(
                f"column {column!r} ({setting}) is not in {cfg.source!r}; "
                f"its columns are: {', '.join(columns)}"
            )


def _reject(index: int, column: str, reason: str, value: Any, answer: str = "") -> Failure:
    """A row not used: row, column, value, and the answer read when it is a part of the value."""
    detail = f"row {index}, column {column!r}, value {_shown(value)}"
    if answer and answer.strip() != str(value).strip():  # the "banana" ending a long solution
        detail += f", answer read {_shown(answer)}"
    return Failure(stage="load", reason=reason, detail=detail, problem_id=str(index))


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _read_reference(
    row: dict[str, Any], index: int, cfg: DatasetConfig, need_reference: bool
) -> str | Failure | None:
    """The golden answer of a row; a rejection when it is needed and unusable (no answer, or one
    with no mathematical content: `mshep.references`), never a wrong golden answer."""
    column = cfg.answer_column or ""
    reference = row[cfg.answer_column] if cfg.answer_column else None
    if reference is None:
        return _reject(index, column, "no reference answer", None) if need_reference else None
    answer = parse_reference_answer(reference, cfg.answer_format)
    if not isinstance(answer, ParseFailure):
        return answer
    # A golden model solves it: an unreadable reference is then not needed.
    return _reject(index, column, answer.reason, reference, answer.text) if need_reference else None


def _read_row(
    row: dict[str, Any], index: int, cfg: DatasetConfig, need_reference: bool
) -> Problem | Failure:
    question = row[cfg.question_column]
    if question is None:
        return _reject(index, cfg.question_column, "question is missing", question)
    if not isinstance(question, str):
        return _reject(index, cfg.question_column, "question is not text", question)
    if not question.strip():
        return _reject(index, cfg.question_column, "question is empty", question)
    answer = _read_reference(row, index, cfg, need_reference)
    if isinstance(answer, Failure):
        return answer
    reference = row[cfg.answer_column] if cfg.answer_column else None
    return Problem(
        id=str(row[cfg.id_column]) if cfg.id_column else str(index),
        question=question.strip(),
        reference_answer=answer,
        reference_solution=str(reference) if reference is not None else None,
    )


def load_problems(cfg: DatasetConfig, need_reference: bool) -> LoadedDataset:
    """Every row becomes a `Problem` or a rejection naming its row, column and value."""
    table = _read_dataset(cfg)
    _check_columns(list(table.column_names), cfg)
    if cfg.limit is not None:
        table = table.select(range(min(cfg.limit, len(table))))
    if len(table) == 0:
        raise _no_rows(cfg)
    loaded = LoadedDataset(rows_in=len(table))
    seen: set[str] = set()
    for index, row in enumerate(table):
        read = _read_row(row, index, cfg, need_reference)
        if isinstance(read, Problem) and read.id in seen:
            read = _reject(index, cfg.id_column or "", "duplicate id", read.id)
        if isinstance(read, Failure):
            loaded.rejected.append(read)
        else:
            seen.add(read.id)
            loaded.problems.append(read)
    return loaded


def records_text(records: Iterable[BaseModel]) -> str:
    return "".join(record.model_dump_json() + "\n" for record in records)


def digest(text: str) -> str:
    """sha256 of a shard's text: its content in downstream cache keys."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextmanager
def _writing(path: str) -> Iterator[None]:
    """A failed write (a full disk, a bucket refusing mid-run) as one `OutputError`: the path and
    the cause, not a traceback."""
    try:
        yield
    except OutputError:
        raise
    except Exception as error:  # fsspec backends raise OSError, botocore and aiohttp types
        raise OutputError(f"cannot write {path}: {one_line(error)}") from error


def write_records(path: str, records: Iterable[BaseModel] | str) -> str:
    """JSON lines on any fsspec path (local or s3://), written whole or not at all: a file that
    exists is complete, so a run killed mid-write leaves no half shard to resume from.
    Returns the content's digest."""
    import fsspec

    text = records if isinstance(records, str) else records_text(records)
    with _writing(path):
        fs, _, (target,) = fsspec.get_fs_token_paths(path)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        partial = target + ".partial"
        with fs.open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
        fs.mv(partial, target)
    return digest(text)


def read_records(path: str, model: type[R]) -> list[R]:
    import fsspec

    with fsspec.open(path, "r", encoding="utf-8") as handle:
        return [model.model_validate_json(line) for line in handle if line.strip()]


def exists(path: str) -> bool:
    """Whether a file is there now (no listing cache: another process may have removed it)."""
    import fsspec

    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    fs.invalidate_cache()
    return bool(fs.exists(target))


def write_dataset(rows: list[dict[str, Any]], directory: str, output: OutputConfig) -> list[str]:
    """One format's rows as `data.parquet` / `data.jsonl` under `directory`."""
    import datasets
    import fsspec

    datasets.disable_progress_bars()  # one bar per file is noise in flow logs
    table = datasets.Dataset.from_list(rows)
    with _writing(directory):
        fs, _, (base,) = fsspec.get_fs_token_paths(directory)
        fs.makedirs(base, exist_ok=True)
    written = []
    for file_type in output.file_types:
        path = f"{directory.rstrip('/')}/data.{file_type}"
        with _writing(path):
            if file_type == "parquet":
                table.to_parquet(path)
            else:
                table.to_json(path, lines=True, force_ascii=False)
        written.append(path)
    return written


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))


def write_text(path: str, text: str) -> None:
    import fsspec

    with _writing(path), fsspec.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def remove(path: str) -> None:
    import fsspec

    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    fs.rm(target)
