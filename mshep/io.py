"""Storage: files on fsspec paths (local or s3://): shard records written whole or not at all,
the output datasets, JSON and text. What cannot be written is one `OutputError` naming the path
(datasets in: `mshep.loading`). fsspec and datasets are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel

from mshep.config import OutputConfig
from mshep.errors import OutputError, one_line

R = TypeVar("R", bound=BaseModel)


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
