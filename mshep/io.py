"""Storage: files on fsspec paths (local or s3://): shard records written whole or not at all,
the output datasets, JSON and text. What cannot be written is one `OutputError` naming the path
(datasets in: `mshep.loading`). fsspec and pyarrow are imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
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


ROW_GROUP = 4096  # rows held before they are written: one parquet row group


class DatasetWriter:
    """One format's rows as `data.parquet` / `data.jsonl` under `directory`, written batch by
    batch as shards are read: at most `ROW_GROUP` rows are held, never the dataset. `columns`
    (name → type, `mshep.formats.COLUMNS`) fixes the schema; without it the first batch's is
    used. Each file is written as `<file>.partial` and moved into place by `close`, so a write
    that fails leaves no half file and an earlier dataset in place. No row written: no file."""

    def __init__(
        self, directory: str, output: OutputConfig, columns: dict[str, str] | None = None
    ) -> None:
        self.directory = directory.rstrip("/")
        self.file_types = list(output.file_types)
        self.columns = columns
        self.rows = 0
        self._held: list[dict[str, Any]] = []
        self._schema: Any = None
        self._files: dict[str, Any] = {}  # file type -> (path, open handle, parquet writer)
        self._made_directory = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def path(self, file_type: str) -> str:
        return f"{self.directory}/data.{file_type}"

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        self._held.extend(rows)
        if len(self._held) >= ROW_GROUP:
            self._flush()

    def close(self) -> list[str]:
        """Write what is held, move every file into place; the paths written."""
        self.finish()
        return self.publish()

    def finish(self) -> None:
        """Write what is held and close the `.partial` files (nothing is in place yet)."""
        self._flush()
        for path, handle, parquet in self._files.values():
            with _writing(path):
                if parquet is not None:
                    parquet.close()
                handle.close()

    def publish(self) -> list[str]:
        """Move the finished files into place; with no row written, remove an earlier run's
        files of this dataset instead, so the directory never holds a dataset this run did
        not write. The paths written."""
        import fsspec

        written = []
        for file_type in self.file_types:
            path = self.path(file_type)
            with _writing(path):
                fs, _, (target,) = fsspec.get_fs_token_paths(path)
                if file_type in self._files:
                    fs.mv(target + ".partial", target)
                    written.append(path)
                elif fs.exists(target):
                    fs.rm(target)
        self._files, self._made_directory = {}, False
        return written

    def abort(self) -> None:
        """Close and remove the partial files (best effort: the error that got here matters)."""
        import fsspec

        for path, handle, parquet in self._files.values():
            with suppress(Exception):
                if parquet is not None:
                    parquet.close()
            with suppress(Exception):
                handle.close()
                fs, _, (target,) = fsspec.get_fs_token_paths(path)
                fs.rm(target + ".partial")
        self._files = {}
        if self._made_directory:  # made for this dataset: none is left to hold
            with suppress(Exception):
                fs, _, (base,) = fsspec.get_fs_token_paths(self.directory)
                fs.rmdir(base)

    def _flush(self) -> None:
        if not self._held:
            return
        import pyarrow as pa

        rows, self._held = self._held, []
        if self._schema is None:
            self._schema = (
                pa.schema([(name, _arrow_type(kind)) for name, kind in self.columns.items()])
                if self.columns
                else pa.Table.from_pylist(rows).schema
            )
        with _writing(self.directory):  # a value that does not fit its column: a bug, named
            table = pa.Table.from_pylist(rows, schema=self._schema)
        for file_type in self.file_types:
            path = self.path(file_type)
            with _writing(path):
                _, handle, parquet = self._open(file_type)
                if parquet is not None:
                    parquet.write_table(table)
                else:
                    handle.write("".join(_json_line(row) for row in rows))
        self.rows += len(rows)

    def _open(self, file_type: str) -> Any:
        if file_type not in self._files:
            import fsspec
            import pyarrow.parquet as pq

            with _writing(self.directory):
                fs, _, (base,) = fsspec.get_fs_token_paths(self.directory)
                if not self._files and not fs.exists(base):
                    self._made_directory = True
                fs.makedirs(base, exist_ok=True)
            path = self.path(file_type)
            if file_type == "parquet":
                handle = fsspec.open(path + ".partial", "wb").open()
                writer = pq.ParquetWriter(handle, self._schema)
            else:
                handle = fsspec.open(path + ".partial", "w", encoding="utf-8").open()
                writer = None
            self._files[file_type] = (path, handle, writer)
        return self._files[file_type]


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"


def _arrow_type(kind: str) -> Any:
    """'string', 'int64', 'float64', 'bool', 'list<…>' as a pyarrow type."""
    import pyarrow as pa

    if kind.startswith("list<") and kind.endswith(">"):
        return pa.list_(_arrow_type(kind[5:-1]))
    scalars = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return scalars[kind] if kind != "bool" else pa.bool_()


def write_dataset(rows: list[dict[str, Any]], directory: str, output: OutputConfig) -> list[str]:
    """One format's rows, all at once (`DatasetWriter` with the first rows' schema)."""
    with DatasetWriter(directory, output) as writer:
        writer.write(rows)
        return writer.close()


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
