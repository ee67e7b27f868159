"""Where the tests find the vLLM engine environment and the tiny random model (no tests here).

The engine environment is a separate venv (vllm cannot share the flow's: fastapi pins), built by
`infra/engine/make-venv.sh <venv> cpu`; tests that need it skip when it is absent. Its location
is `$MSHEP_ENGINE_VENV`, default `<repo>/.engine-venv`. The tiny model is built once by
`infra/engine/build_tiny_model.py` with the engine's python and cached inside the venv, keyed by
the hash of the script and its corpus, so editing the script rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "infra" / "engine" / "build_tiny_model.py"
CORPUS = REPO / "mshep" / "data" / "gsm8k-test-200.jsonl"
MARKER = ".mshep-engine-env"  # written by make-venv.sh once the venv is complete


def engine_venv() -> Path:
    return Path(os.environ.get("MSHEP_ENGINE_VENV") or REPO / ".engine-venv")


def engine_python() -> Path | None:
    """The engine venv's python, or None when no complete engine venv is there."""
    venv = engine_venv()
    python = venv / "bin" / "python"
    if python.exists() and (venv / MARKER).exists():
        return python
    return None


needs_engine = pytest.mark.skipif(
    engine_python() is None,
    reason=f"no engine env at {engine_venv()} (infra/engine/make-venv.sh <venv> cpu)",
)


def _model_key() -> str:
    digest = hashlib.sha256(BUILD_SCRIPT.read_bytes())
    if CORPUS.exists():
        digest.update(CORPUS.read_bytes())
    return digest.hexdigest()[:16]


def _build(python: Path, out: Path) -> None:
    subprocess.run(
        [str(python), str(BUILD_SCRIPT), str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )


def tiny_model(tmp_dir: Path) -> Path:
    """The tiny random Llama model directory, built once per script version.

    Cached at `<engine venv>/tiny-model/<key>`; built into `tmp_dir` when that is not writable.
    """
    python = engine_python()
    if python is None:
        raise FileNotFoundError(f"no engine env at {engine_venv()}")
    cache_root = engine_venv() / "tiny-model"
    cached = cache_root / _model_key()
    if (cached / "config.json").exists():
        return cached
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_root))
    except OSError:
        out = Path(tmp_dir) / "tiny-model"
        _build(python, out)
        return out
    try:
        _build(python, staging / "model")
        try:
            (staging / "model").rename(cached)  # atomic; a concurrent builder may have won
        except OSError:
            if not (cached / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached
