"""No secret leaks: a whole run (`mshep run` in a subprocess, output and task results on s3:// in
a moto server, the simulated model, a push to a fake Hub) with an HF token, an S3 secret key and
an API key in its environment, and not one of them anywhere it writes: its logs (at DEBUG), the
Prefect API (flow parameters, task runs and their cache keys, logs, blocks), the files on s3://
(shard data, persisted results, outputs, summary, card), or what the Hub received outside the
Authorization header."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig
from tests.conftest import S3_SECRET
from tests.fake_hub import FakeHub

pytestmark = pytest.mark.slow

HF_SECRET = "hf_secretTOKENa81c4e"
API_SECRET = "sk-secretAPIKEY-77d2"
SECRETS = (HF_SECRET, S3_SECRET, API_SECRET)
OUTPUT = "s3://mshep/secrets"


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def every(read: Callable[..., list[Any]], **kwargs: Any) -> str:
    """All records of one API listing, page by page, as JSON lines."""
    out, offset = [], 0
    while page := read(limit=200, offset=offset, **kwargs):
        out += [record.model_dump_json() for record in page]
        offset += len(page)
    return "\n".join(out)


def api_records() -> dict[str, str]:
    """Everything the Prefect API keeps of the runs, as text."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {
            "flow runs": every(client.read_flow_runs),
            "task runs": every(client.read_task_runs),
            "logs": every(client.read_logs),
            "blocks": "\n".join(
                b.model_dump_json(context={"include_secrets": True})
                for b in client.read_block_documents(include_secrets=True)
            ),
        }


@pytest.fixture(scope="module")
def secret_run(
    prefect_harness: None,
    s3_server: dict[str, str],
    gsm8k_test: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL

    tmp = tmp_path_factory.mktemp("secrets")
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim, FakeHub(HF_SECRET) as hub:
        config = {
            "dataset": {"source": str(gsm8k_test), "limit": 12},
            "generator": {"M": 2, "model": "sim"},
            "completer": {"N": 2, "model": "sim"},
            "serving": {"base_url": sim.base_url, "token_env": "MSHEP_TEST_API_KEY"},
            "output": {"path": OUTPUT, "push_to_hub": "team/prm-data", "private": True},
            "execution": {"shard_size": 4},
        }
        (tmp / "config.json").write_text(json.dumps(config))
        env = {
            **s3_server,
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp),
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_LOGGING_LEVEL": "DEBUG",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_TOKEN": HF_SECRET,
            "HF_ENDPOINT": hub.endpoint,
            "MSHEP_TEST_API_KEY": API_SECRET,
        }
        command = [sys.executable, "-m", "mshep.cli", "run", "--config", str(tmp / "config.json")]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]
        return {"run": done, "hub": hub}


def test_the_run_pushed_and_its_logs_hold_no_secret(secret_run):
    done, hub = secret_run["run"], secret_run["hub"]
    assert json.loads(done.stdout)["hub_url"].endswith("team/prm-data")
    assert "README.md" in hub.repo("team/prm-data").files
    assert len(done.stderr) > 1000  # DEBUG logs were written: the check below means something
    assert leaked(done.stdout + done.stderr) == []


def test_the_prefect_api_holds_no_secret(secret_run):
    records = api_records()
    # Prefect 3 keeps cache keys with the results (file names under .work/results, checked
    # below with the s3 files), not in the API; task runs hold their inputs' references only.
    assert "push to hub" in records["task runs"] and len(records["logs"]) > 1000
    assert {where: leaked(text) for where, text in records.items()} == {key: [] for key in records}


def test_no_file_on_s3_holds_a_secret(secret_run):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    files = fs.find(OUTPUT.removeprefix("s3://"))
    names = {Path(name).name for name in files}
    assert {"summary.json", "README.md", "data.parquet", "data.jsonl"} <= names
    assert any("/.work/results/" in name for name in files)  # cache keys are these file names
    assert any("/.work/complete-" in name for name in files)
    for name in files:
        assert leaked(name + fs.cat(name).decode("utf-8", "replace")) == [], name


def test_the_hub_got_the_token_only_in_the_authorization_header(secret_run):
    hub = secret_run["hub"]
    assert hub.requests
    for request in hub.requests:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        assert (
            leaked(request.path + json.dumps(headers) + request.body.decode("utf-8", "replace"))
            == []
        )
    for path, content in hub.repo("team/prm-data").files.items():
        assert leaked(content.decode("utf-8", "replace")) == [], path
