"""The command line: help, config round trip, and one clear message (no traceback) for each
bad value, bad dataset, unreachable endpoint or missing token."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mshep import cli
from mshep.config import RunConfig
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

GSM8K = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"
# Over 100 characters: a shorter single line passes as a plain answer in "auto" format.
PROSE = "no answer here, just prose that goes on and on " * 3


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def parsed(*argv: str) -> RunConfig:
    return cli.build_config(cli._parser().parse_args(["check", *argv]))


def gsm8k_rows(count: int) -> list[dict[str, Any]]:
    with GSM8K.open() as handle:
        return [json.loads(next(handle)) for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), GSM8K) as model:
        yield model


def check(capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, *argv: str):
    return run_cli(capsys, "check", "--base-url", sim.base_url, *argv)


# --- help -------------------------------------------------------------------------------


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "check", "config", "simulate", "examples:"):
        assert command in out


def test_run_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--config PATH", "--dataset SOURCE", "--split", "--limit ROWS", "--model"):
        assert option in out
    for option in ("--base-url URL", "-M M", "-N N", "--output PATH", "--set KEY=VALUE"):
        assert option in out


def test_help_works_as_an_installed_script() -> None:
    script = Path(sys.executable).with_name("mshep")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mshep.cli"]
    done = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mshep")
    assert "label a dataset" in done.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


# --- config -----------------------------------------------------------------------------


def test_config_prints_the_defaults_as_valid_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "config")
    assert code == 0
    assert RunConfig.model_validate(yaml.safe_load(out)) == RunConfig()


def test_options_and_set_override_the_config_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli.main(["config"])
    path = tmp_path / "run.yaml"
    path.write_text(capsys.readouterr().out)
    config = parsed(
        "--config", str(path), "--limit", "5", "-M", "2", "-N", "3",
        "--output", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:8000/v1",
        "--model", "small", "--set", "completer.sampling.temperature=0.9",
        "--set", "dataset.answer_format=gsm8k",
    )  # fmt: skip
    expected = RunConfig().model_dump()
    expected["dataset"].update(limit=5, answer_format="gsm8k")
    expected["generator"].update(M=2, model="small")
    expected["completer"].update(N=3, model="small")
    expected["completer"]["sampling"]["temperature"] = 0.9
    expected["output"]["path"] = str(tmp_path / "out")
    expected["serving"]["base_url"] = "http://127.0.0.1:8000/v1"
    assert config.model_dump() == expected


def test_set_overrides_an_option(tmp_path: Path) -> None:
    assert parsed("-M", "2", "--set", "generator.M=6").generator.M == 6


def test_golden_model_takes_golden_answers_from_the_model() -> None:
    config = parsed("--golden-model", "big")
    assert (config.golden.source, config.golden.model) == ("model", "big")


# --- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["-M", "0"], ["generator.M", "greater than or equal to 1", "got 0"]),
        (["--limit", "0"], ["dataset.limit"]),
        (["--set", "completer.strategy=magic"], ["completer.strategy", "'magic'"]),
        (["--set", "completer.sampling.temperature=hot"], ["completer.sampling.temperature"]),
        (["--set", "generatr.M=2"], ["generatr", "Extra inputs are not permitted"]),
    ],
)
def test_bad_values_name_the_setting(
    capsys: pytest.CaptureFixture[str], argv: list[str], names: list[str]
) -> None:
    code, _, err = run_cli(capsys, "check", *argv)
    assert code == 2
    assert err.startswith("invalid config (1 problem):")
    for name in names:
        assert name in err


def test_an_unknown_key_in_the_config_file_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("dataset:\n  source: x.jsonl\n  sorce: y.jsonl\n")
    code, _, err = run_cli(capsys, "run", "--config", str(path))
    assert code == 2
    assert "dataset.sorce: Extra inputs are not permitted (got 'y.jsonl')" in err


def test_every_problem_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", "-M", "0", "-N", "999")
    assert code == 2
    assert "2 problems" in err and "generator.M" in err and "completer.N" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataset: [\n", "is not valid YAML: "),
        ("- a list\n", "the config must be a mapping of sections, got list"),
    ],
)
def test_a_malformed_config_file_is_one_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    code, _, err = run_cli(capsys, "run", "--config", str(path))
    assert code == 1
    assert err.startswith(f"error: {path}") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_config_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "run", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert err == f"error: config file not found: {tmp_path / 'nope.yaml'}\n"


def test_a_directory_as_config_file_is_one_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "run", "--config", str(tmp_path))
    assert code == 1
    assert err.startswith(f"error: cannot read config file {tmp_path}")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("foo", "--set takes KEY=VALUE (e.g. --set generator.M=8), got 'foo'"),
        ("=1", "'' is not a setting name"),
        ("generator..M=1", "'generator..M' is not a setting name"),
        ("dataset.limit=[", "--set dataset.limit: '[' is not a valid YAML value"),
        ("dataset.source.path=x", "cannot set dataset.source.path: dataset.source is"),
    ],
)
def test_a_malformed_set_is_one_message(
    capsys: pytest.CaptureFixture[str], item: str, message: str
) -> None:
    code, _, err = run_cli(capsys, "check", "--dataset", "x.jsonl", "--set", item)
    assert code == 1
    assert err.startswith("error: ") and message in err


def test_a_non_number_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "-M", "four"])
    assert exit_.value.code == 2
    assert "argument -M: invalid int value: 'four'" in capsys.readouterr().err


# --- the dataset, checked before anything runs ------------------------------------------


def test_check_reports_what_will_run(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel
) -> None:
    code, out, err = check(capsys, sim, "--dataset", str(GSM8K), "--limit", "5", "-M", "2")
    assert code == 0 and out == ""
    assert f"dataset {GSM8K}: 5 rows, 5 usable" in err
    assert f"generator: meta-llama/Llama-3.1-8B-Instruct via http ({sim.base_url})" in err
    assert "M=2, N=4" in err


def test_a_misnamed_question_column_lists_the_columns(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel
) -> None:
    code, _, err = check(capsys, sim, "--dataset", str(GSM8K), "--question-column", "problem")
    assert code == 1
    assert "column 'problem' (dataset.question_column) is not in" in err
    assert "its columns are: question, answer" in err


def test_a_misnamed_answer_column_lists_the_columns(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel
) -> None:
    code, _, err = check(capsys, sim, "--dataset", str(GSM8K), "--answer-column", "solution")
    assert code == 1
    assert "'solution' (dataset.answer_column)" in err and "question, answer" in err


def test_an_empty_dataset_is_an_error(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, tmp_path: Path
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    code, _, err = check(capsys, sim, "--dataset", str(path))
    assert code == 1
    assert err == f"error: dataset {path} has no rows\n"


def test_unusable_rows_are_counted_and_shown_the_rest_run(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, tmp_path: Path
) -> None:
    good = gsm8k_rows(3)
    rows = [
        good[0],
        {"question": "", "answer": "#### 3"},
        good[1],
        {"question": 17, "answer": "#### 4"},
        {"question": good[2]["question"], "answer": PROSE},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    code, _, err = check(capsys, sim, "--dataset", str(path))
    assert code == 0
    assert f"dataset {path}: 5 rows, 2 usable; 3 not used:" in err
    assert "1 × load: question is empty" in err and "1 × load: question is not text" in err
    assert "1 × load: no final answer in the reference (auto format)" in err
    assert "not used: row 1, column 'question', value '' (question is empty)" in err
    assert "not used: row 3, column 'question', value 17" in err
    assert "not used: row 4, column 'answer', value 'no answer here" in err


def test_a_dataset_with_no_usable_row_is_an_error(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, tmp_path: Path
) -> None:
    rows = [{"question": " ", "answer": "#### 1"}, {"question": "What is x?", "answer": PROSE}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    code, _, err = check(capsys, sim, "--dataset", str(path))
    assert code == 1
    assert err.startswith(f"error: no usable row in '{path}': 1 × load: question is empty; ")
    assert "(first: row 0, column 'question', value ' ')" in err


def test_a_missing_dataset_file_is_named(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, tmp_path: Path
) -> None:
    code, _, err = check(capsys, sim, "--dataset", str(tmp_path / "nope.jsonl"))
    assert code == 1
    assert err == f"error: dataset file not found: {tmp_path / 'nope.jsonl'}\n"


# --- endpoints and tokens ---------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_an_unreachable_endpoint_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code, _, err = run_cli(capsys, "check", "--base-url", url, "--dataset", str(GSM8K))
    assert code == 1
    assert err.startswith(f"error: cannot reach {url}: ")
    assert len(err.strip().splitlines()) == 1


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the token check must come before any network call")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_a_missing_token_is_named_before_any_network_call(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, _, err = run_cli(capsys, "check", "--dataset", str(GSM8K))
    assert code == 1
    assert err.startswith("error: Hugging Face Inference needs an API token")
    assert "set the environment variable HF_TOKEN" in err


def test_the_token_variable_can_be_renamed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.delenv("MY_TOKEN", raising=False)
    code, _, err = run_cli(capsys, "check", "--set", "serving.token_env=MY_TOKEN")
    assert code == 1 and "set the environment variable MY_TOKEN" in err


# --- a whole run ------------------------------------------------------------------------


@pytest.mark.slow
def test_run_labels_the_good_rows_and_accounts_for_the_bad(
    prefect_harness: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = gsm8k_rows(9)
    rows = [*good[:4], {"question": "", "answer": "#### 3"}, *good[4:8]]
    rows.append({"question": good[8]["question"], "answer": PROSE})
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    output = tmp_path / "out"
    with SimulatedMathModel(SimulatorConfig(), GSM8K) as model:
        code, out, err = run_cli(
            capsys, "run", "--dataset", str(path), "--base-url", model.base_url,
            "--model", "sim", "-M", "2", "-N", "2", "--output", str(output),
        )  # fmt: skip
    assert code == 0, err
    assert f"dataset {path}: 10 rows, 8 usable; 2 not used" in err
    summary = json.loads(out)
    assert summary["rows_in"] == 10
    assert summary["rows_labelled"] == 8
    assert summary["rows_not_labelled"] == {
        "load: question is empty": 1,
        "load: no final answer in the reference (auto format)": 1,
    }
    assert summary["solutions_generated"] == 8 * 2
    assert (output / "trl" / "data.parquet").exists()
    assert json.loads((output / "summary.json").read_text())["rows_in"] == 10


# --- the output and the Hub push, checked before anything runs ----------------------------


def test_check_writes_a_probe_to_an_s3_output_and_removes_it(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, s3_server: dict[str, str]
) -> None:
    import fsspec

    code, _, err = check(capsys, sim, "--dataset", str(GSM8K), "--output", "s3://mshep/checked")
    assert code == 0, err
    assert "output s3://mshep/checked: writable" in err
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    assert not fs.exists("mshep/checked/.work/.write-check")


def test_an_unreachable_s3_endpoint_is_named_before_the_run(
    capsys: pytest.CaptureFixture[str],
    sim: SimulatedMathModel,
    s3_server: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # fsspec keeps one per settings; the env is read anew
    try:
        code, _, err = check(capsys, sim, "--dataset", str(GSM8K), "--output", "s3://mshep/x")
    finally:
        S3FileSystem.clear_instance_cache()
    assert code == 1
    assert err.startswith("error: cannot write to output.path 's3://mshep/x'")


def test_an_unwritable_local_output_is_named(
    capsys: pytest.CaptureFixture[str], sim: SimulatedMathModel, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = check(capsys, sim, "--dataset", str(GSM8K), "--output", str(blocker / "out"))
    assert code == 1 and "cannot write to output.path" in err and "a-file" in err


def test_a_hub_push_without_a_token_fails_before_the_run(
    capsys: pytest.CaptureFixture[str],
    sim: SimulatedMathModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    push = ("--set", "output.push_to_hub=team/prm", "--set", "output.hub_token_env=MSHEP_HUB")
    argv = ("--dataset", str(GSM8K), "--output", str(tmp_path), *push)
    monkeypatch.delenv("MSHEP_HUB", raising=False)
    code, _, err = check(capsys, sim, *argv)
    assert code == 1
    assert "MSHEP_HUB" in err and "output.hub_token_env" in err
    monkeypatch.setenv("MSHEP_HUB", "hf_x")
    code, _, err = check(capsys, sim, *argv)
    assert code == 0 and "push to Hub dataset team/prm (private), token found" in err
    assert "hf_x" not in err
