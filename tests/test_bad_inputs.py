"""Never a wrong dataset with exit 0 (issue 14), the input side: every bad input a user can give
(dataset, columns, rows, reference answers, config, settings, endpoint, output, Hub token, the
simulator) ends in one message naming the problem (setting, column, row, value, path or URL),
with exit 1 (2 for a setting pydantic refuses) and no traceback, before any model call; rows that
cannot be used are reported and the others run. Cases go through `mshep.cli.main` in-process,
`check` wherever the run would stop in the checks anyway."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mshep import cli
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

GSM8K = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"
HEADER = "invalid config (1 problem):"
NO_TOKEN = "MSHEP_TEST_UNSET_TOKEN"  # a token variable no environment sets
PUSH = ("--set", "output.push_to_hub=team/prm", "--set", f"output.hub_token_env={NO_TOKEN}")


def gsm8k_rows(count: int) -> list[dict[str, Any]]:
    with GSM8K.open() as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


GOOD = gsm8k_rows(3)
WITH_IDS = jsonl([{"id": "a", **GOOD[0]}, {"id": "b", **GOOD[1]}, {"id": "a", **GOOD[2]}])


PLAIN = jsonl(
    [
        {"question": "What is 1 + 1?", "answer": "2"},
        {"question": "What is 2 + 2?", "answer": "4"},
        {"question": "What is 3 + 3?", "answer": "see above"},
    ]
)


def with_answer(answer: str) -> str:
    """Two good rows, then one whose reference answer is `answer` (row 2)."""
    return jsonl([*GOOD[:2], {"question": GOOD[2]["question"], "answer": answer}])


@dataclass(frozen=True)
class Case:
    """`argv` and `says` may hold {tmp} (a fresh folder), {url} (the simulated model's base URL),
    {closed} (a port nothing listens on), {port} (a port in use) and {gsm8k}. `files` are written
    under {tmp} first. With `endpoint`, `check` gets `--base-url {url}`."""

    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)
    command: str = "check"
    endpoint: bool = True


CASES: dict[str, Case] = {
    # --- the dataset source
    "missing dataset file": Case(
        ("--dataset", "{tmp}/nope.jsonl"), 1, ("dataset file not found: {tmp}/nope.jsonl",)
    ),
    "directory as dataset": Case(
        ("--dataset", "{tmp}"),
        1,
        ("dataset.source '{tmp}' is a directory", ".jsonl, .json, .parquet, .csv"),
    ),
    "unsupported suffix": Case(
        ("--dataset", "{tmp}/data.tsv"),
        1,
        ("'{tmp}/data.tsv': unsupported file type '.tsv'", "supported: .jsonl, .json"),
        files={"data.tsv": "question\tanswer\nWhat is 1 + 1?\t#### 2\n"},
    ),
    "empty file": Case(
        ("--dataset", "{tmp}/empty.jsonl"),
        1,
        ("dataset {tmp}/empty.jsonl has no rows",),
        files={"empty.jsonl": ""},
    ),
    "header-only csv": Case(
        ("--dataset", "{tmp}/header.csv"),
        1,
        ("dataset {tmp}/header.csv has no rows",),
        files={"header.csv": "question,answer\n"},
    ),
    "a line that is not json": Case(
        ("--dataset", "{tmp}/broken.jsonl"),
        1,
        ("cannot load dataset '{tmp}/broken.jsonl': ",),
        files={"broken.jsonl": jsonl(GOOD[:1]) + "{not json\n"},
    ),
    # --- columns
    "wrong question column": Case(
        ("--dataset", "{gsm8k}", "--question-column", "problem"),
        1,
        ("column 'problem' (dataset.question_column)", "its columns are: question, answer"),
    ),
    "wrong answer column": Case(
        ("--dataset", "{gsm8k}", "--answer-column", "solution"),
        1,
        ("column 'solution' (dataset.answer_column)", "its columns are: question, answer"),
    ),
    "wrong id column": Case(
        ("--dataset", "{gsm8k}", "--set", "dataset.id_column=uid"),
        1,
        ("column 'uid' (dataset.id_column)", "its columns are: question, answer"),
    ),
    # --- rows: reported with row, column and value; the others run
    "duplicate ids": Case(
        ("--dataset", "{tmp}/ids.jsonl", "--set", "dataset.id_column=id"),
        0,
        ("3 rows, 2 usable; 1 not used: 1 × load: duplicate id", "row 2, column 'id', value 'a'"),
        files={"ids.jsonl": WITH_IDS},
    ),
    "all rows unusable": Case(
        ("--dataset", "{tmp}/bad.jsonl"),
        1,
        ("no usable row in '{tmp}/bad.jsonl'", "2 × load: question is empty"),
        files={"bad.jsonl": jsonl([{"question": " ", "answer": "#### 1"}] * 2)},
    ),
    "reference with no mathematical content (auto)": Case(
        ("--dataset", "{tmp}/banana.jsonl"),
        0,
        (
            "3 rows, 2 usable; 1 not used: 1 × load: reference answer has no mathematical content",
            "row 2, column 'answer', value 'the answer is banana', answer read 'banana'",
        ),
        files={"banana.jsonl": with_answer("the answer is banana")},
    ),
    "placeholder reference (gsm8k)": Case(
        ("--dataset", "{tmp}/na.jsonl", "--set", "dataset.answer_format=gsm8k"),
        0,
        ("1 × load: reference answer is a placeholder", "row 2, column 'answer', value '#### N/A'"),
        files={"na.jsonl": with_answer("#### N/A")},
    ),
    "placeholder reference (plain)": Case(
        ("--dataset", "{tmp}/plain.jsonl", "--set", "dataset.answer_format=plain"),
        0,
        (
            "1 × load: reference answer is a placeholder",
            "row 2, column 'answer', value 'see above'",
        ),
        files={"plain.jsonl": PLAIN},
    ),
    "every reference a placeholder (boxed)": Case(
        ("--dataset", "{tmp}/boxed.jsonl", "--set", "dataset.answer_format=boxed"),
        1,
        (
            "no usable row",
            "2 × load: reference answer is a placeholder",
            "value '\\\\boxed{{none}}'",
        ),
        files={
            "boxed.jsonl": jsonl([{"question": "What is 1 + 1?", "answer": "\\boxed{none}"}] * 2)
        },
    ),
    # --- the config file and --set
    "bad config yaml": Case(
        ("--config", "{tmp}/run.yaml"),
        1,
        ("{tmp}/run.yaml is not valid YAML: ", "(line 2, column 1)"),
        files={"run.yaml": "dataset: [\n"},
    ),
    "config not a mapping": Case(
        ("--config", "{tmp}/run.yaml"),
        1,
        ("{tmp}/run.yaml: the config must be a mapping of sections, got list",),
        files={"run.yaml": "- a list\n"},
    ),
    "missing config file": Case(
        ("--config", "{tmp}/nope.yaml"), 1, ("config file not found: {tmp}/nope.yaml",)
    ),
    "unknown setting": Case(
        ("--set", "dataset.sorce=x.jsonl"),
        2,
        ("dataset.sorce: Extra inputs are not permitted (got 'x.jsonl')",),
    ),
    "M below range": Case(
        ("-M", "0"), 2, ("generator.M: Input should be greater than or equal to 1",)
    ),
    "M above range": Case(
        ("-M", "999"), 2, ("generator.M: Input should be less than or equal to",)
    ),
    "N out of range": Case(
        ("-N", "0"), 2, ("completer.N: Input should be greater than or equal to 1",)
    ),
    "bad strategy": Case(
        ("--set", "completer.strategy=random"),
        2,
        ("completer.strategy: Input should be 'per_step' or 'first_error' (got 'random')",),
    ),
    "--set without '='": Case(
        ("--set", "generator.M"), 1, ("--set takes KEY=VALUE", "got 'generator.M'")
    ),
    "bad --set yaml value": Case(
        ("--set", "dataset.limit=["), 1, ("--set dataset.limit: '[' is not a valid YAML value",)
    ),
    "bad --set value type": Case(
        ("--set", "generator.M=four"), 2, ("generator.M: Input should be a valid integer",)
    ),
    "bad answer format": Case(
        ("--set", "dataset.answer_format=latex"), 2, ("dataset.answer_format: Input should be",)
    ),
    "limit 0": Case(
        ("--limit", "0"), 2, ("dataset.limit: Input should be greater than or equal to 1",)
    ),
    "shard_size 0": Case(
        ("--shard-size", "0"),
        2,
        ("execution.shard_size: Input should be greater than or equal to 1",),
    ),
    # --- where the models are served
    "unreachable endpoint": Case(
        ("--base-url", "http://127.0.0.1:{closed}/v1", "--dataset", "{gsm8k}"),
        1,
        ("cannot reach http://127.0.0.1:{closed}/v1: ",),
        endpoint=False,
    ),
    "endpoint that is not a url": Case(
        ("--base-url", "127.0.0.1:8000/v1", "--dataset", "{gsm8k}"),
        1,
        ("cannot reach 127.0.0.1:8000/v1: ", "'http://' or 'https://'"),
        endpoint=False,
    ),
    "bad serving.kind": Case(
        ("--set", "serving.kind=grpc"), 2, ("serving.kind: Input should be 'http' or 'vllm'",)
    ),
    "serving.kind vllm without an engine environment": Case(
        ("--dataset", "{gsm8k}", "--set", "serving.kind=vllm"),
        1,
        ("serving.kind 'vllm'", "serving.engine_python is unset", "make-venv.sh"),
    ),
    "engine_python that does not exist": Case(
        (
            "--dataset",
            "{gsm8k}",
            "--set",
            "serving.kind=vllm",
            "--set",
            "serving.engine_python={tmp}/engine/bin/python",
        ),
        1,
        ("serving.engine_python", "does not exist", "make-venv.sh"),
    ),
    "engine_python without vllm": Case(
        (
            "--dataset",
            "{gsm8k}",
            "--set",
            "serving.kind=vllm",
            "--set",
            f"serving.engine_python={sys.executable}",
        ),
        1,
        ("serving.engine_python", "has no vllm", "make-venv.sh"),
    ),
    "stage tasks holding GPUs with vllm engines": Case(
        (
            "--dataset",
            "{gsm8k}",
            "--set",
            "serving.kind=vllm",
            "--set",
            "execution.generator_gpus=1",
        ),
        2,
        ("execution.generator_gpus is 1 but serving.kind is 'vllm'",),
    ),
    # --- the output and the Hub
    "output path that is a file": Case(
        ("--dataset", "{gsm8k}", "--output", "{tmp}/a-file"),
        1,
        ("cannot write to output.path '{tmp}/a-file': {tmp}/a-file is a file",),
        files={"a-file": "not a directory"},
    ),
    "output under a file": Case(
        ("--dataset", "{gsm8k}", "--output", "{tmp}/a-file/out"),
        1,
        ("cannot write to output.path '{tmp}/a-file/out': {tmp}/a-file is a file",),
        files={"a-file": "not a directory"},
    ),
    "unwritable output": Case(
        # sysfs takes no new file, not even from root, whom permission bits do not stop
        ("--dataset", "{gsm8k}", "--output", "/sys/mshep-out"),
        1,
        ("cannot write to output.path '/sys/mshep-out': cannot create a file in /sys",),
    ),
    "push_to_hub without token": Case(
        ("--dataset", "{gsm8k}", "--output", "{tmp}/out", *PUSH),
        1,
        (NO_TOKEN, "output.hub_token_env"),
    ),
    # --- the simulated model
    "simulate: missing data file": Case(
        ("--data", "{tmp}/nope.jsonl"),
        1,
        ("simulator data file not found: {tmp}/nope.jsonl",),
        command="simulate",
    ),
    "simulate: data without the needed columns": Case(
        ("--data", "{tmp}/math.jsonl"),
        1,
        ("{tmp}/math.jsonl line 1 has no column 'question' (its columns are: problem, solution)",),
        files={"math.jsonl": jsonl([{"problem": "1 + 1?", "solution": "\\boxed{2}"}])},
        command="simulate",
    ),
    "simulate: port in use": Case(
        ("--data", "{gsm8k}", "--port", "{port}"),
        1,
        ("port {port} on 127.0.0.1 is in use", "--port"),
        command="simulate",
    ),
    "simulate: bad setting": Case(
        ("--data", "{gsm8k}", "--p-wrong-step", "1.5"),
        2,
        ("--p-wrong-step: Input should be less than or equal to 1 (got 1.5)",),
        command="simulate",
    ),
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), GSM8K) as model:
        yield model


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    """A port nothing listens on, and one held (listening) while the module runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield {"closed": closed, "port": held.getsockname()[1]}


def assert_one_message(err: str, code: int) -> None:
    """Exit 1: one `error: …` line. Exit 2: pydantic's header and one line naming the setting."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    elif code == 2:  # the simulator's settings are one line; the config's, a header and one
        simulator = len(lines) == 1 and lines[0].startswith("error: --")
        assert simulator or (len(lines) == 2 and lines[0] == HEADER), err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_message_naming_the_problem(
    name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sim: SimulatedMathModel,
    ports: dict[str, int],
) -> None:
    case = CASES[name]
    monkeypatch.delenv(NO_TOKEN, raising=False)
    if name == "unwritable output" and not Path("/sys").is_dir():
        pytest.skip("needs a sysfs mount")
    places = {"tmp": str(tmp_path), "url": sim.base_url, "gsm8k": str(GSM8K), **ports}
    for file_name, text in case.files.items():
        (tmp_path / file_name).write_text(text)
    argv = [arg.format(**places) for arg in case.argv]
    if case.command == "check" and case.endpoint:
        argv = ["--base-url", sim.base_url, *argv]
    code = cli.main([case.command, *argv])
    out, err = capsys.readouterr()
    assert code == case.code, err
    assert "Traceback" not in err
    if case.code:  # exit 0: the check's report, with the rows not used listed
        assert_one_message(err, case.code)
        assert out == ""
    for fragment in case.says:
        assert fragment.format(**places) in err, err


def test_the_matrix_covers_every_kind_of_bad_input() -> None:
    assert len(CASES) >= 25
    assert {case.code for case in CASES.values()} == {0, 1, 2}


# --- nothing already finished is lost ----------------------------------------------------


# These start Prefect. `capfd`, not `capsys`: Prefect's log handlers may hold the stderr of
# whichever test configured logging first, so only the file descriptor sees all they write.


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_rerun_that_fails_its_checks_keeps_the_first_runs_outputs(
    prefect_harness: None,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
    ports: dict[str, int],
) -> None:
    """A run labels the good rows (the "banana" reference reported, never a golden answer); a
    re-run with a bad endpoint or column stops in its checks and leaves every file as it was."""
    rows = gsm8k_rows(5)
    rows[4] = {"question": rows[4]["question"], "answer": "the answer is banana"}
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl(rows))
    output = tmp_path / "out"
    same = ("--dataset", str(data), "--model", "sim", "-M", "2", "-N", "2", "--output", str(output))
    with SimulatedMathModel(SimulatorConfig(), GSM8K) as model:
        code = cli.main(["run", "--base-url", model.base_url, *same])
        out, err = capfd.readouterr()
        assert code == 0, err
        assert "row 4, column 'answer', value 'the answer is banana', answer read 'banana'" in err
        summary = json.loads(out)
        assert summary["rows_not_labelled"] == {
            "load: reference answer has no mathematical content": 1
        }
        raw = [
            json.loads(line) for line in (output / "raw" / "data.jsonl").read_text().splitlines()
        ]
        assert "banana" not in {row["golden_answer"] for row in raw}
        before = snapshot(output)
        closed = f"http://127.0.0.1:{ports['closed']}/v1"
        bad_reruns = {
            f"cannot reach {closed}": ("--base-url", closed),
            "'solution' (dataset.answer_column)": (
                "--base-url", model.base_url, "--answer-column", "solution"
            ),
        }  # fmt: skip
        for message, bad in bad_reruns.items():
            code = cli.main(["run", *bad, *same])
            out, err = capfd.readouterr()
            assert code == 1 and out == ""
            # The last line is the CLI's; Prefect's failure logs come before it (next test).
            last = err.strip().splitlines()[-1]
            assert last.startswith("error: ") and message in last, err
            assert snapshot(output) == before


@pytest.mark.slow
def test_a_run_that_stops_in_its_checks_logs_no_traceback(
    prefect_harness: None,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    ports: dict[str, int],
) -> None:
    """What reaches the console is what is logged (records with a traceback print one), and
    where Prefect's console handler writes depends on which test set logging up first."""
    closed = f"http://127.0.0.1:{ports['closed']}/v1"
    argv = ["run", "--base-url", closed, "--dataset", str(GSM8K), "--output", str(tmp_path)]
    assert cli.main(argv) == 1
    last = capfd.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach {closed}: ")
    with_traceback = [  # Prefect passes exc_info=True outside an exception: no traceback then
        f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info and r.exc_info[0]
    ]
    assert with_traceback == []


def test_an_unreachable_prefect_api_is_named_before_the_run(
    capsys: pytest.CaptureFixture[str], ports: dict[str, int], tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = f"http://127.0.0.1:{ports['closed']}/api"
    argv = ["run", "--dataset", str(GSM8K), "--output", str(tmp_path / "out")]
    with temporary_settings(updates={PREFECT_API_URL: api}):
        code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot reach the Prefect API at {api} (PREFECT_API_URL)")
    assert not (tmp_path / "out").exists()
