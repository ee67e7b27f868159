"""Storage: datasets in (Hub names, local jsonl/json/parquet/csv, s3:// URIs). Every row becomes a
`Problem` or a rejection naming its row, column and value; a source that cannot be read is one
`DatasetError` naming it. `datasets` is imported inside the functions that need it. This is the
code of the load stage: its digest is part of every stage key (`mshep.shards`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mshep.config import DatasetConfig
from mshep.errors import DatasetError, one_line
from mshep.parsing import ParseFailure
from mshep.records import Failure, Problem
from mshep.references import parse_reference_answer

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SUPPORTED = ", ".join(FILE_BUILDERS)


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


@dataclass
class _JsonLines:
    """A local .jsonl file read with the json module: what `load_problems` uses of a
    `datasets.Dataset` (columns, length, the first rows, iteration), without importing datasets
    (~1 s) or writing its Arrow cache. Only the first `limit` rows are read."""

    column_names: list[str]
    rows: list[dict[str, Any]]

    @classmethod
    def read(cls, cfg: DatasetConfig) -> _JsonLines:
        columns: dict[str, None] = {}
        rows: list[dict[str, Any]] = []
        try:
            with open(cfg.source, encoding="utf-8-sig") as lines:  # a BOM, as datasets reads it
                for number, line in enumerate(lines, start=1):
                    if cfg.limit is not None and len(rows) >= cfg.limit:
                        break
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as error:
                        raise DatasetError(
                            f"cannot load dataset {cfg.source!r}: line {number} is not JSON: "
                            f"{one_line(error)}"
                        ) from None
                    if not isinstance(row, dict):
                        raise DatasetError(
                            f"cannot load dataset {cfg.source!r}: line {number} is not a JSON "
                            f"object ({type(row).__name__})"
                        )
                    columns.update(dict.fromkeys(row))
                    rows.append(row)
        except (OSError, UnicodeDecodeError) as error:
            why = one_line(error)
            raise DatasetError(f"cannot read dataset file {cfg.source}: {why}") from None
        names = list(columns)
        return cls(names, [{name: row.get(name) for name in names} for row in rows])

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def select(self, indices: range) -> _JsonLines:
        return _JsonLines(self.column_names, self.rows[: len(indices)])


def _read_dataset(cfg: DatasetConfig) -> Any:
    if _is_local(cfg.source) and Path(cfg.source).suffix.lower() == ".jsonl":
        _check_local_file(cfg)
        return _JsonLines.read(cfg)
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
