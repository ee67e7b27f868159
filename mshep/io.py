"""Storage: datasets in (Hub, local files, s3://) and out, and shard files on fsspec paths.

Heavy libraries (datasets, fsspec) are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from mshep.config import DatasetConfig, OutputConfig
from mshep.errors import DatasetError
from mshep.parsing import ParseFailure
from mshep.records import Failure, Problem
from mshep.references import parse_reference_answer

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
R = TypeVar("R", bound=BaseModel)


@dataclass
class LoadedDataset:
    rows_in: int
    problems: list[Problem] = field(default_factory=list)
    rejected: list[Failure] = field(default_factory=list)


def _is_local(source: str) -> bool:
    return "://" not in source and Path(source).suffix.lower() in FILE_BUILDERS


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


def _describe(error: BaseException) -> str:
    """The message of a loading error and of its cause (datasets often wraps the real one)."""
    parts = [str(error) or type(error).__name__]
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in parts[0]:
        parts.append(f"{type(cause).__name__}: {cause}")
    return ": ".join(parts)


def _check_local_file(cfg: DatasetConfig) -> None:
    path = Path(cfg.source)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {cfg.source}")
    if _has_no_rows(path):
        raise _no_rows(cfg)


def _read_dataset(cfg: DatasetConfig) -> Any:
    import datasets

    datasets.disable_progress_bars()  # "Generating train split" bars are noise in a CLI check
    suffix = Path(cfg.source).suffix.lower()
    if _is_local(cfg.source):
        _check_local_file(cfg)
    try:
        if suffix in FILE_BUILDERS:
            return datasets.load_dataset(
                FILE_BUILDERS[suffix], data_files=cfg.source, split="train"
            )
        return datasets.load_dataset(cfg.source, cfg.name, split=cfg.split)
    except Exception as error:  # datasets raises many types; the user needs the message only
        if "corresponds to no data" in str(error):  # a header, or a split, without rows
            raise _no_rows(cfg) from error
        raise DatasetError(f"cannot load dataset {cfg.source!r}: {_describe(error)}") from error


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


def _reject(index: int, column: str, reason: str, value: Any) -> Failure:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    detail = f"row {index}, column {column!r}, value {shown}"
    return Failure(stage="load", reason=reason, detail=detail, problem_id=str(index))


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
    problem_id = str(row[cfg.id_column]) if cfg.id_column else str(index)
    reference = row[cfg.answer_column] if cfg.answer_column else None
    answer = parse_reference_answer(reference, cfg.answer_format) if reference is not None else None
    if isinstance(answer, ParseFailure) or (need_reference and answer is None):
        if need_reference:
            reason = answer.reason if isinstance(answer, ParseFailure) else "no reference answer"
            return _reject(index, cfg.answer_column or "", reason, reference)
        answer = None
    return Problem(
        id=problem_id,
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


def write_records(path: str, records: Iterable[BaseModel] | str) -> str:
    """JSON lines on any fsspec path (local or s3://), written whole or not at all: a file that
    exists is complete, so a run killed mid-write leaves no half shard to resume from.
    Returns the content's digest."""
    import fsspec

    text = records if isinstance(records, str) else records_text(records)
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
    fs, _, (base,) = fsspec.get_fs_token_paths(directory)
    fs.makedirs(base, exist_ok=True)
    written = []
    for file_type in output.file_types:
        path = f"{directory.rstrip('/')}/data.{file_type}"
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

    with fsspec.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def remove(path: str) -> None:
    import fsspec

    fs, _, (target,) = fsspec.get_fs_token_paths(path)
    fs.rm(target)
