"""push_to_hub through the real huggingface_hub client against a fake Hub on loopback: the repo,
the committed files and their bytes, the card's configs and figures, where the token comes from,
and that the token goes nowhere but the Authorization header."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import yaml
from pydantic import BaseModel, Field

from flows.secrets import hub_token
from mshep.card import dataset_card
from mshep.config import OutputConfig, RunConfig
from mshep.errors import MissingToken, MshepError
from mshep.hub import push_dataset
from mshep.io import write_dataset
from mshep.summary import RunSummary, StageSummary
from tests.fake_hub import FakeHub

TOKEN = "hf_fake_0123456789abcdefSECRET"
REPO = "someone/gsm8k-prm"
TOKEN_ENV = "MSHEP_TEST_HUB_TOKEN"

ROWS: dict[str, list[dict[str, Any]]] = {
    "math_shepherd": [
        {
            "input": "What is 2 + 3? Step 1: 2 + 3 = 5 ки",
            "label": "What is 2 + 3? Step 1: 2 + 3 = 5 +",
        },
        {
            "input": "What is 4 * 2? Step 1: 4 * 2 = 6 ки",
            "label": "What is 4 * 2? Step 1: 4 * 2 = 6 -",
        },
    ],
    "trl": [
        {"prompt": "What is 2 + 3?", "completions": ["Step 1: 2 + 3 = 5"], "labels": [True]},
        {"prompt": "What is 4 * 2?", "completions": ["Step 1: 4 * 2 = 6"], "labels": [False]},
    ],
    "raw": [
        {"problem_id": "a", "soft_labels": [0.75], "hard_labels": ["good"]},
        {"problem_id": "b", "soft_labels": [0.0], "hard_labels": ["bad"]},
        {"problem_id": "c", "soft_labels": [None], "hard_labels": ["unknown"]},
    ],
}


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(TOKEN) as fake:
        yield fake


def make_config(tmp_path: Path, **output: Any) -> RunConfig:
    values = {"path": str(tmp_path / "out"), "push_to_hub": REPO, "hub_token_env": TOKEN_ENV}
    return RunConfig.model_validate(
        {
            "generator": {"model": "weak/generator-1b", "M": 3},
            "completer": {"model": "weak/completer-1b", "N": 5},
            "output": values | output,
        }
    )


def write_outputs(config: RunConfig) -> dict[str, list[str]]:
    return {
        name: write_dataset(rows, f"{config.output.path}/{name}", config.output)
        for name, rows in ROWS.items()
    }


def make_summary(files: dict[str, list[str]]) -> RunSummary:
    return RunSummary(
        rows_in=4,
        rows_labelled=3,
        rows_not_labelled={"golden: no golden answer": 1},
        solutions_generated=9,
        solutions_labelled=3,
        rows_out={"math_shepherd": 2, "trl": 2, "raw": 3},
        rows_dropped={
            "math_shepherd": {"a step's label is unknown (no valid rollout)": 1},
            "trl": {"a step's label is unknown (no valid rollout)": 1},
            "raw": {},
        },
        labels={"good": 1, "bad": 1, "unknown": 1},
        stages={
            "generate": StageSummary(requests=4, prompt_tokens=1234, completion_tokens=5678),
            "complete": StageSummary(
                requests=30, prompt_tokens=98765, completion_tokens=43210, failures={"length": 2}
            ),
        },
        outputs=files,
    )


def push(config: RunConfig, summary: RunSummary, token: str, endpoint: str) -> str:
    """The flow's way: the card rendered once, then pushed with the files it lists."""
    return push_dataset(config, summary, dataset_card(config, summary), token, endpoint=endpoint)


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return dict(yaml.safe_load(card.split("\n---\n", 1)[0][4:]))


@pytest.mark.parametrize("private", [True, False])
def test_push_creates_the_repo_and_commits_every_file_and_the_card(
    tmp_path: Path, hub: FakeHub, private: bool
) -> None:
    config = make_config(tmp_path, private=private)
    files = write_outputs(config)
    url = push(config, make_summary(files), TOKEN, endpoint=hub.endpoint)

    assert url == f"{hub.endpoint}/datasets/{REPO}"
    repo = hub.repo(REPO)
    assert repo.private is private
    assert len(repo.commits) == 1
    expected = {
        f"{name}/data.{kind}": Path(path).read_bytes()
        for name, paths in files.items()
        for kind, path in zip(config.output.file_types, paths, strict=True)
    }
    assert {p: b for p, b in repo.files.items() if p != "README.md"} == expected
    assert len(expected) == 6
    card = repo.files["README.md"].decode()
    assert card == dataset_card(config, make_summary(files))


def test_push_to_an_existing_repo_adds_a_commit(tmp_path: Path, hub: FakeHub) -> None:
    config = make_config(tmp_path)
    files = write_outputs(config)
    for _ in range(2):
        push(config, make_summary(files), TOKEN, endpoint=hub.endpoint)
    assert len(hub.repo(REPO).commits) == 2
    assert [r.path for r in hub.requests if r.path == "/api/repos/create"] == [
        "/api/repos/create"
    ] * 2


def test_push_reads_files_through_fsspec(tmp_path: Path, hub: FakeHub) -> None:
    """Outputs on a remote filesystem (memory:// here, s3:// in runs) are uploaded as they are."""
    config = make_config(tmp_path, formats=["trl"], file_types=["jsonl"])
    remote = f"memory://mshep-hub-test/{tmp_path.name}/trl/data.jsonl"
    with fsspec.open(remote, "wb") as handle:
        handle.write(b'{"prompt": "q", "completions": ["Step 1: x"], "labels": [true]}\n')
    files = {"trl": [remote]}
    push(config, make_summary(files), TOKEN, endpoint=hub.endpoint)
    with fsspec.open(remote, "rb") as handle:
        assert hub.repo(REPO).files["trl/data.jsonl"] == handle.read()


def test_card_configs_load_with_datasets(tmp_path: Path, hub: FakeHub) -> None:
    """The pushed repo, laid out on disk, loads per format by config name with `datasets`."""
    import datasets

    config = make_config(tmp_path)
    files = write_outputs(config)
    push(config, make_summary(files), TOKEN, endpoint=hub.endpoint)
    clone = tmp_path / "clone"
    for path, data in hub.repo(REPO).files.items():
        (clone / path).parent.mkdir(parents=True, exist_ok=True)
        (clone / path).write_bytes(data)
    for name, rows in ROWS.items():
        loaded = datasets.load_dataset(str(clone), name, split="train")
        assert loaded.to_list() == rows
    assert datasets.load_dataset(str(clone), split="train").num_rows == len(ROWS["math_shepherd"])


def test_card_front_matter_has_one_config_per_format(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    files = write_outputs(config)
    meta = front_matter(dataset_card(config, make_summary(files)))
    assert "process-reward-model" in meta["tags"] and "math-shepherd" in meta["tags"]
    assert "license" not in meta  # the user's choice
    assert meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [
        {
            "config_name": name,
            "data_files": [{"split": "train", "path": [f"{name}/data.parquet"]}],
            **({"default": True} if name == "math_shepherd" else {}),
        }
        for name in ROWS
    ]


def test_card_says_how_the_data_was_made_and_what_the_run_counted(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    card = dataset_card(config, make_summary(write_outputs(config)))
    for text in [
        "`weak/generator-1b`, M = 3 candidate solutions per question",
        "`weak/completer-1b`, N = 5 rollouts per step prefix",
        "| strategy | `first_error`: a binary search",
        "| witness rule | on: a candidate",
        "| difficulty filter | off |",
        "the dataset's reference answers (column `answer`)",
        "`openai/gsm8k` (main, split test)",
        "| good | 1 | 33.3% |",
        "| all | 3 |",
        "| questions in | 4 |",
        "| not labelled: golden: no golden answer | 1 |",
        "| `trl` | 2 | 1 × a step's label is unknown (no valid rollout) |",
        "| `raw` | 3 | none |",
        "| complete | 30 | 98,765 | 43,210 | 2 × length |",
        f'load_dataset("{REPO}", "math_shepherd", split="train")',
        "| generator sampling | temperature: 0.7; top_p: 1.0; max_tokens: 2048; seed: 0 |",
        f"hub_token_env: {TOKEN_ENV}",
    ]:
        assert text in card, text
    assert "Quality report" not in card


class QualityStub(BaseModel):
    """Stands in for the quality report another part of the run adds to the summary."""

    agreement: float = Field(default=0.875, description="Share of labels agreeing.")
    steps_per_solution: dict[str, float] = {"mean": 3.5, "max": 9}
    per_1k_tokens: float | None = None


def test_card_renders_a_quality_report_when_the_summary_has_one(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    summary = make_summary(write_outputs(config)).model_copy(update={"quality": QualityStub()})
    card = dataset_card(config, summary)
    assert "## Quality report" in card
    assert "| `agreement` | 0.875 | Share of labels agreeing. |" in card
    assert "| `steps_per_solution` | mean: 3.5; max: 9.0 |  |" in card
    assert "| `per_1k_tokens` | – |  |" in card


def test_card_cuts_credentials_out_of_urls(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.serving = config.serving.model_copy(update={"base_url": "http://me:pw@host:8000/v1"})
    card = dataset_card(config, make_summary(write_outputs(config)))
    assert "me:pw" not in card and "http://***@host:8000/v1" in card


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, f" {TOKEN}\n")
    assert hub_token(OutputConfig(hub_token_env=TOKEN_ENV)) == TOKEN


def test_missing_token_names_the_variable() -> None:
    with pytest.raises(MissingToken, match=TOKEN_ENV):
        hub_token(OutputConfig(hub_token_env=TOKEN_ENV))


def test_token_from_a_prefect_secret_block(
    prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    Secret(value=TOKEN).save("mshep-test-hub-token", overwrite=True)
    monkeypatch.setenv(TOKEN_ENV, "not-this-one")
    output = OutputConfig(hub_token_env=TOKEN_ENV, hub_token_block="mshep-test-hub-token")
    assert hub_token(output) == TOKEN


def test_missing_secret_block_names_the_block(prefect_harness: None) -> None:
    with pytest.raises(MissingToken, match="no-such-hub-token"):
        hub_token(OutputConfig(hub_token_block="no-such-hub-token"))


def test_token_goes_only_into_the_authorization_header(
    tmp_path: Path, hub: FakeHub, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    config = make_config(tmp_path)
    files = write_outputs(config)
    summary = make_summary(files)
    url = push(config, summary, hub_token(config.output), endpoint=hub.endpoint)

    assert hub.requests and all(
        r.headers["authorization"] == f"Bearer {TOKEN}" for r in hub.requests
    )
    for request in hub.requests:
        assert TOKEN not in request.body.decode(errors="replace")
        assert TOKEN not in request.path
        assert not [k for k, v in request.headers.items() if TOKEN in v and k != "authorization"]
    assert TOKEN not in dataset_card(config, summary)
    assert TOKEN not in url and TOKEN not in caplog.text
    assert TOKEN not in repr(config) and TOKEN not in repr(summary)


def test_a_refused_token_is_a_clear_error_without_the_token(tmp_path: Path, hub: FakeHub) -> None:
    config = make_config(tmp_path)
    files = write_outputs(config)
    wrong = "hf_wrong_token_value_42"
    with pytest.raises(MshepError, match=REPO) as raised:
        push(config, make_summary(files), wrong, endpoint=hub.endpoint)
    assert wrong not in str(raised.value)
    assert "401" in str(raised.value)
    assert hub.repos == {}


def test_the_fake_hub_saw_only_the_write_endpoints(tmp_path: Path, hub: FakeHub) -> None:
    """If huggingface_hub starts calling another endpoint, this says which."""
    config = make_config(tmp_path)
    files = write_outputs(config)
    push(config, make_summary(files), TOKEN, endpoint=hub.endpoint)
    assert [(r.method, r.path.split("?")[0]) for r in hub.requests] == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/datasets/{REPO}/preupload/main"),
        ("POST", f"/api/datasets/{REPO}/commit/main"),
    ]


def test_an_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    files = write_outputs(config)
    with FakeHub(TOKEN) as gone:
        endpoint = gone.endpoint
    with pytest.raises(MshepError, match=f"{REPO}.*failed"):
        push(config, make_summary(files), TOKEN, endpoint=endpoint)


def test_the_api_token_from_a_prefect_secret_block(prefect_harness: None) -> None:
    from prefect.blocks.system import Secret

    from flows.secrets import serving_token
    from mshep.config import ServingConfig

    Secret(value="sk-served").save("mshep-test-api-token", overwrite=True)
    assert serving_token(ServingConfig(token_block="mshep-test-api-token")) == "sk-served"
    assert serving_token(ServingConfig()) is None  # the backend reads serving.token_env
    with pytest.raises(MissingToken, match=r"serving\.token_block"):
        serving_token(ServingConfig(token_block="no-such-api-token"))


def test_the_check_report_cuts_credentials_out_of_urls(gsm8k_test: Path) -> None:
    """The checks' lines are logged and kept in summary.json: no `user:password@` in them."""
    from mshep.checks import check_backends
    from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim:
        url = sim.base_url.replace("http://", "http://me:pw-secret@")
        config = RunConfig.model_validate({"serving": {"base_url": url}})
        lines = check_backends(config)
    assert lines and all("pw-secret" not in line and "***@" in line for line in lines)
