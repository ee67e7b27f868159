"""Storage: datasets read from local jsonl / parquet / csv files, every row a problem or a
rejection naming its row, column and value (a reference with no mathematical content too); a
source that is not a data file named; records written and read back, a failed write one
`OutputError` naming the path and its cause."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from mshep.config import DatasetConfig, OutputConfig
from mshep.errors import DatasetError, OutputError
from mshep.io import exists, read_records, write_dataset, write_json, write_records
from mshep.loading import load_problems
from mshep.records import Failure, Problem

ROWS: list[dict[str, Any]] = [
    {"id": "a", "question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"id": "b", "question": "What is 4 * 2?", "answer": "4 * 2 = 8\n#### 8"},
    {"id": "c", "question": "What is 9 - 7?", "answer": "9 - 7 = 2\n#### 2"},
]


def write(rows: list[dict[str, Any]], path: Path) -> Path:
    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def jsonl(lines: list[str], path: Path) -> Path:
    """Rows as written by hand: pandas would coerce mixed-type columns."""
    path.write_text("".join(line + "\n" for line in lines))
    return path


def load(path: Path, need_reference: bool = True, **settings: Any):
    return load_problems(DatasetConfig(source=str(path), **settings), need_reference)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_local_files_load_every_row(tmp_path: Path, suffix: str) -> None:
    loaded = load(write(ROWS, tmp_path / f"data{suffix}"))
    assert loaded.rows_in == 3 and not loaded.rejected
    assert [p.id for p in loaded.problems] == ["0", "1", "2"]
    assert [p.reference_answer for p in loaded.problems] == ["5", "8", "2"]
    assert loaded.problems[0].question == "What is 2 + 3?"
    assert loaded.problems[0].reference_solution == ROWS[0]["answer"]


def test_id_column_names_the_problems(tmp_path: Path) -> None:
    loaded = load(write(ROWS, tmp_path / "data.parquet"), id_column="id")
    assert [p.id for p in loaded.problems] == ["a", "b", "c"]


def test_limit_keeps_the_first_rows(tmp_path: Path) -> None:
    loaded = load(write(ROWS, tmp_path / "data.jsonl"), limit=2)
    assert loaded.rows_in == 2 and [p.id for p in loaded.problems] == ["0", "1"]


def test_a_limit_beyond_the_rows_is_the_whole_dataset(tmp_path: Path) -> None:
    assert load(write(ROWS, tmp_path / "data.jsonl"), limit=100).rows_in == 3


def test_duplicate_ids_are_rejected_with_the_row(tmp_path: Path) -> None:
    rows = [*ROWS, {"id": "a", "question": "What is 1 + 1?", "answer": "#### 2"}]
    loaded = load(write(rows, tmp_path / "data.jsonl"), id_column="id")
    assert [p.id for p in loaded.problems] == ["a", "b", "c"]
    (failure,) = loaded.rejected
    assert failure.reason == "duplicate id"
    assert failure.detail == "row 3, column 'id', value 'a'"


def test_bad_questions_are_rejected_naming_row_column_and_value(tmp_path: Path) -> None:
    path = jsonl(
        [
            '{"question": 42, "answer": "#### 4"}',
            '{"question": "What is 1 + 1?", "answer": "#### 2"}',
            '{"question": "   ", "answer": "#### 3"}',
            '{"question": null, "answer": "#### 5"}',
            '{"question": ["a list"], "answer": "#### 6"}',
        ],
        tmp_path / "data.jsonl",
    )
    loaded = load(path)
    assert loaded.rows_in == 5 and [p.id for p in loaded.problems] == ["1"]
    assert [(f.problem_id, f.reason, f.detail) for f in loaded.rejected] == [
        ("0", "question is not text", "row 0, column 'question', value 42"),
        ("2", "question is empty", "row 2, column 'question', value '   '"),
        ("3", "question is missing", "row 3, column 'question', value None"),
        ("4", "question is not text", "row 4, column 'question', value ['a list']"),
    ]
    assert all(f.stage == "load" for f in loaded.rejected)


def test_an_unparseable_reference_is_rejected_only_when_it_is_needed(tmp_path: Path) -> None:
    prose = "no answer here, just prose that goes on and on " * 3
    rows = [*ROWS[:2], {"question": "What is 3 + 3?", "answer": prose}]
    path = write(rows, tmp_path / "data.jsonl")
    (failure,) = load(path).rejected
    assert failure.reason == "no final answer in the reference (auto format)"
    assert failure.detail is not None
    assert failure.detail.startswith("row 2, column 'answer', value 'no answer here")
    assert len(failure.detail) < 120  # a long value is cut short
    golden_from_a_model = load(path, need_reference=False)
    assert not golden_from_a_model.rejected
    assert golden_from_a_model.problems[2].reference_answer is None


def test_a_short_line_of_prose_is_not_a_reference_answer(tmp_path: Path) -> None:
    rows = [{"question": "What is 3 + 3?", "answer": "no answer here, just prose that goes on..."}]
    rows.append(ROWS[0])
    (failure,) = load(write(rows, tmp_path / "data.jsonl")).rejected
    assert failure.detail is not None and failure.detail.startswith("row 0, column 'answer'")


@pytest.mark.parametrize(
    ("answer_format", "expected"),
    [("gsm8k", ["5", None]), ("boxed", [None, "7"]), ("auto", ["5", "7"])],
)
def test_answer_format(tmp_path: Path, answer_format: str, expected: list[str | None]) -> None:
    rows = [
        {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"},
        {"question": "What is 3 + 4?", "answer": "So the answer is $\\boxed{7}$."},
    ]
    loaded = load(write(rows, tmp_path / "data.jsonl"), answer_format=answer_format)
    by_id = {p.id: p.reference_answer for p in loaded.problems}
    assert [by_id.get(str(i)) for i in range(2)] == expected
    rejected = {f.problem_id: f.reason for f in loaded.rejected}
    assert set(rejected) == {str(i) for i, answer in enumerate(expected) if answer is None}
    assert all(answer_format in reason for reason in rejected.values())


def test_a_misnamed_column_lists_the_columns_there_are(tmp_path: Path) -> None:
    path = write(ROWS, tmp_path / "data.csv")
    with pytest.raises(DatasetError) as error:
        load(path, question_column="problem")
    message = str(error.value)
    assert "'problem' (dataset.question_column)" in message
    assert "its columns are: id, question, answer" in message


@pytest.mark.parametrize(
    ("name", "text"),
    [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.csv", ""), ("header.csv", "q,a\n")],
)
def test_an_empty_file_has_no_rows(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"dataset {path} has no rows"):
        load(path)


def test_an_empty_parquet_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"question": pd.Series([], dtype=str), "answer": []}).to_parquet(path)
    with pytest.raises(DatasetError, match="has no rows"):
        load(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset file not found: {tmp_path}/nope.jsonl"):
        load(tmp_path / "nope.jsonl")


def test_an_unreadable_file_says_why(tmp_path: Path) -> None:
    path = jsonl(
        ['{"question": "What is 1 + 1?", "answer": "#### 2"}', "{not json"], tmp_path / "x.jsonl"
    )
    with pytest.raises(DatasetError, match=f"cannot load dataset '{path}': .+"):
        load(path)


def test_records_round_trip_on_a_local_path(tmp_path: Path) -> None:
    records = [
        Problem(id="a", question="What is 2 + 3?", reference_answer="5"),
        Problem(id="b", question="Ünïcode ки?", reference_answer=None),
    ]
    path = str(tmp_path / "deep" / "dir" / "shard-00000.jsonl")
    write_records(path, records)
    assert exists(path) and not exists(path + ".partial")
    assert read_records(path, Problem) == records
    write_records(path, records[:1])  # rewritten whole, not appended
    assert read_records(path, Problem) == records[:1]


def test_an_empty_shard_round_trips(tmp_path: Path) -> None:
    path = str(tmp_path / "failures.jsonl")
    write_records(path, [])
    assert read_records(path, Failure) == []


# --- sources that are not a data file, and answers that are not values (issue 14) --------------


def test_a_directory_is_not_a_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "data.jsonl"
    folder.mkdir()
    with pytest.raises(DatasetError) as error:
        load(folder)
    assert str(error.value) == (
        f"dataset.source {str(folder)!r} is a directory: name a data file in it "
        "(.jsonl, .json, .parquet, .csv), a Hub dataset or an s3:// URI"
    )


@pytest.mark.parametrize("name", ["data.tsv", "data.jsonl.gz", "data"])
def test_an_unsupported_file_type_lists_the_supported_ones(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("question\tanswer\nWhat is 1 + 1?\t#### 2\n")
    with pytest.raises(DatasetError, match="unsupported file type") as error:
        load(path)
    assert str(error.value).startswith(f"dataset.source {str(path)!r}: ")
    assert str(error.value).endswith("supported: .jsonl, .json, .parquet, .csv")


def test_a_missing_file_of_any_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset file not found: {tmp_path}/nope.txt"):
        load(tmp_path / "nope.txt")


@pytest.mark.parametrize("answer_format", ["auto", "gsm8k", "boxed", "plain"])
def test_a_reference_with_no_mathematical_content_is_never_a_golden_answer(
    tmp_path: Path, answer_format: str
) -> None:
    written = {
        "auto": "the answer is banana",
        "gsm8k": "Some working.\n#### banana",
        "boxed": "So \\boxed{banana}.",
        "plain": "banana",
    }
    rows = [
        {"question": "What is 2 + 3?", "answer": "5"},
        {"question": "What is 3 + 4?", "answer": written[answer_format]},
    ]
    if answer_format != "plain":
        rows[0]["answer"] = {"gsm8k": "#### 5", "boxed": "\\boxed{5}", "auto": "5"}[answer_format]
    loaded = load(write(rows, tmp_path / "data.jsonl"), answer_format=answer_format)
    assert [p.reference_answer for p in loaded.problems] == ["5"]
    (failure,) = loaded.rejected
    assert failure.reason == "reference answer has no mathematical content"
    assert failure.detail is not None
    assert failure.detail.startswith(f"row 1, column 'answer', value {written[answer_format]!r}")
    if answer_format != "plain":  # the answer read is named when it is part of the value
        assert failure.detail.endswith(", answer read 'banana'")


def test_a_placeholder_reference_is_refused_unless_a_model_gives_the_golden_answer(
    tmp_path: Path,
) -> None:
    rows = [*ROWS[:2], {"question": "What is 3 + 3?", "answer": "N/A"}]
    path = write(rows, tmp_path / "data.jsonl")
    (failure,) = load(path).rejected
    assert failure.reason == "reference answer is a placeholder, not a value"
    assert failure.detail == "row 2, column 'answer', value 'N/A'"
    golden_from_a_model = load(path, need_reference=False)
    assert not golden_from_a_model.rejected
    assert golden_from_a_model.problems[2].reference_answer is None


# --- writes that fail are one OutputError naming the path and the cause ------------------------


def blocked(tmp_path: Path) -> Path:
    """A path under a plain file: every write there fails in the OS."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "out"


def test_a_failed_shard_write_names_the_path_and_the_cause(tmp_path: Path) -> None:
    path = str(blocked(tmp_path) / "shard.jsonl")
    with pytest.raises(OutputError) as error:
        write_records(path, [Problem(id="a", question="q?", reference_answer="1")])
    message = str(error.value)
    assert message.startswith(f"cannot write {path}: NotADirectoryError: ")
    assert "\n" not in message


def test_a_failed_text_write_names_the_path_and_the_cause(tmp_path: Path) -> None:
    path = str(blocked(tmp_path) / "summary.json")
    with pytest.raises(OutputError, match=f"cannot write {path}: .*Error: "):
        write_json(path, {"rows_in": 1})


def test_a_failed_dataset_write_names_the_path_and_the_cause(tmp_path: Path) -> None:
    directory = str(blocked(tmp_path) / "trl")
    with pytest.raises(OutputError, match=f"cannot write {directory}: NotADirectoryError"):
        write_dataset([{"prompt": "q?", "labels": [True]}], directory, OutputConfig())


def test_a_dataset_file_that_cannot_be_written_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory is fine but the file write fails (a full disk): the file is named, no
    half file is left, and the dataset an earlier run wrote there is still whole."""
    import pyarrow.parquet as pq

    directory = str(tmp_path / "trl")
    write_dataset([{"prompt": "old"}], directory, OutputConfig())
    before = {p.name: p.read_bytes() for p in (tmp_path / "trl").iterdir()}

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(OutputError) as error:
        write_dataset([{"prompt": "q?"}], directory, OutputConfig())
    assert str(error.value) == (
        f"cannot write {directory}/data.parquet: OSError: [Errno 28] No space left on device"
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "trl").iterdir()} == before


def test_a_dataset_written_batch_by_batch_has_its_declared_columns(tmp_path: Path) -> None:
    """Rows come shard by shard; a first shard where a column is all null (no bad step) does
    not decide its type, and nothing is in place before `close`."""
    import pyarrow.parquet as pq

    from mshep.io import ROW_GROUP, DatasetWriter

    columns = {"id": "string", "first_bad_step": "int64", "soft": "list<float64>"}
    directory = str(tmp_path / "raw")
    with DatasetWriter(directory, OutputConfig(), columns) as writer:
        writer.write([{"id": "a", "first_bad_step": None, "soft": [None, 1.0]}] * ROW_GROUP)
        writer.write([{"id": "b", "first_bad_step": 2, "soft": [0.5]}])
        assert not (tmp_path / "raw" / "data.parquet").exists()  # only the .partial so far
        paths = writer.close()
    assert paths == [f"{directory}/data.parquet", f"{directory}/data.jsonl"]
    table = pq.read_table(paths[0])
    assert str(table.schema.field("first_bad_step").type) == "int64"
    assert table.num_rows == ROW_GROUP + 1 and writer.rows == ROW_GROUP + 1
    lines = (tmp_path / "raw" / "data.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"id": "b", "first_bad_step": 2, "soft": [0.5]}
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["data.jsonl", "data.parquet"]


def test_a_writer_that_gets_no_row_writes_no_file(tmp_path: Path) -> None:
    from mshep.io import DatasetWriter

    with DatasetWriter(str(tmp_path / "trl"), OutputConfig(), {"prompt": "string"}) as writer:
        writer.write([])
        assert writer.close() == []
    assert not (tmp_path / "trl").exists()


def test_an_aborted_writer_leaves_nothing_it_made(tmp_path: Path) -> None:
    from mshep.io import DatasetWriter

    with pytest.raises(RuntimeError), DatasetWriter(str(tmp_path / "raw"), OutputConfig()) as w:
        w.write([{"prompt": "q?"}] * 5000)  # a row group written to the .partial files
        raise RuntimeError("the run failed")
    assert not (tmp_path / "raw").exists()


def test_a_dataset_with_no_row_this_run_leaves_no_earlier_file(tmp_path: Path) -> None:
    """Every row of a format dropped this time: the files an earlier run wrote there go, so
    the folder never shows a dataset next to a summary that says it has no row."""
    from mshep.io import DatasetWriter

    directory = str(tmp_path / "trl")
    write_dataset([{"prompt": "old"}], directory, OutputConfig())
    with DatasetWriter(directory, OutputConfig(), {"prompt": "string"}) as writer:
        assert writer.close() == []
    assert list((tmp_path / "trl").iterdir()) == []


def test_a_jsonl_file_with_a_byte_order_mark_reads_like_one_without(tmp_path: Path) -> None:
    rows = [{"question": "What is 1 + 1?", "answer": "#### 2"}] * 2
    text = "".join(json.dumps(row) + "\n" for row in rows)
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    read = [load_problems(DatasetConfig(source=str(p)), True) for p in (plain, marked)]
    assert read[0].problems == read[1].problems and len(read[1].problems) == 2
