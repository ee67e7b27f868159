"""`mshep demo`: the whole pipeline in one command on the embedded default (bundled GSM8K
questions, the simulated model in-process), with a progress line on a terminal."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a tty")
def test_mshep_demo_writes_a_dataset_and_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    output = tmp_path / "demo"
    command = f"{BIN / 'mshep'} demo --limit 8 -M 2 -N 2 --output {output}"
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path)}
    done = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:]
    assert "shards finished: generate 1/1, complete 1/1" in done.stdout
    assert f"dataset: {output}/" in done.stdout
    assert "questions labelled: 8 of 8" in done.stdout
    summary = json.loads((output / "summary.json").read_text())
    assert summary["rows_labelled"] == 8 and (output / "trl" / "data.parquet").exists()
    assert "Failed to send telemetry" not in done.stdout
