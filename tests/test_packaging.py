"""The layers as installed: the core (records to formats, the backend protocol, the fake backend)
installs without prefect, ray or fastapi, so a GPU engine environment can hold mshep next to vllm
(whose fastapi pin excludes prefect). Installs into a fresh virtual environment from the
package index, so it is slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.network]

REPO = Path(__file__).resolve().parents[1]

LABEL = """
import json, sys
from mshep.backends.fake import FakeBackend
from mshep.config import CompleterConfig
from mshep.labelling import LabelTarget
from mshep.completion import label_solutions
from mshep.records import Solution

solution = Solution(steps=["2 + 2 = 5", "5 * 3 = 15"], answer="15", model="weak")
target = LabelTarget("q0", "What is (2 + 2) * 3?", "12", solution)
replies = ["Step 2: 4 * 3 = 12. The answer is: 12"] * 2 + ["The answer is: 15"] * 2
config = CompleterConfig(N=2, strategy="per_step", witness=False)
result = label_solutions(FakeBackend(replies), [target], config)
print(json.dumps({
    "labels": [label.hard.value for label in result.solutions[0].labels],
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
}))
"""


def test_the_core_installs_and_labels_without_prefect_ray_or_fastapi(tmp_path: Path) -> None:
    venv = tmp_path / "core"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    packages = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "mshep" in packages
    assert not packages & {"prefect", "prefect-ray", "ray", "fastapi", "vllm", "datasets"}
    done = subprocess.run(
        [str(python), "-c", LABEL], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["labels"] == ["good", "bad"]  # a rollout from step 1 reaches 12; 15 is wrong
    assert not set(out["modules"]) & {"prefect", "ray", "fastapi", "huggingface_hub"}
    cli = subprocess.run(
        [str(venv / "bin" / "mshep"), "run", "--dataset", "x.jsonl"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert cli.returncode == 1 and "pip install 'mshep[flow]'" in cli.stderr, cli.stderr
