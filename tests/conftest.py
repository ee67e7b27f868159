from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "gsm8k"


@pytest.fixture(scope="session")
def gsm8k_test() -> Path:
    return DATA / "test.jsonl"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """The real Prefect test harness (a temporary API server and database), once per session."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"  # no internet: telemetry only errs
    with prefect_test_harness(server_startup_timeout=120):
        yield
