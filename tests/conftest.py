from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import environment

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


# Distinctive values, so a test can search every log and file for them.
S3_SECRET = "s3-secret-9f4e2b7c1d"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 API (moto server on 127.0.0.1) with a bucket `mshep`; yields the environment a
    process needs to reach it (also set in this process while the session lasts)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "mshep-test-key",
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with environment(env):
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("mshep")
        try:
            yield env
        finally:
            server.stop()
