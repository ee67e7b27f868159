"""Prefect, process-wide: what `mshep run` sets up around the flow. Prefect's environment before
Prefect is imported (no telemetry calls from an offline machine, a start-up limit for the
temporary server that holds on a loaded 2-core machine), a clear message when a configured API
cannot be reached, and interrupts that stop at once, keep what finished and say how to resume."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from mshep.config import RunConfig
from mshep.errors import ConfigError

# Prefect's default of 20 s is missed on a loaded 2-core machine; a persistent server
# (`prefect server start`, PREFECT_API_URL) pays no start-up at all.
STARTUP_TIMEOUT_S = "120"
API_CHECK_TIMEOUT_S = 5.0


def prepare_environment() -> None:
    """Before the first Prefect import; what the user set wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S)


def check_api() -> None:
    """A configured PREFECT_API_URL (environment or profile) answers its health check."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return  # a temporary server is started for the run
    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=API_CHECK_TIMEOUT_S).raise_for_status()
    except httpx.HTTPError as error:
        raise ConfigError(
            f"cannot reach the Prefect API at {url} (PREFECT_API_URL): {error}; start the "
            "server, or unset PREFECT_API_URL to run with a temporary one"
        ) from None


@contextlib.contextmanager
def interrupts(config: RunConfig) -> Iterator[None]:
    """SIGINT / SIGTERM end the process within moments, exit 130 / 143, with one line saying
    what finished. Finished shards are already on storage (each written whole, its reference
    last), so nothing finished is lost; Prefect's own shutdown (minutes of event draining) is
    skipped."""

    def stop(signum: int, frame: FrameType | None) -> None:
        from mshep.shards import finished_counts

        try:
            kept = ", ".join(f"{stage} {n}" for stage, n in finished_counts(config).items())
        except Exception:  # storage unreachable: still stop, still say how to resume
            kept = "see the output's .work folder"
        name = signal.Signals(signum).name
        print(
            f"interrupted ({name}): finished shards are kept ({kept or 'none yet'}); "
            "run the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def terminal_progress() -> Iterator[None]:
    """On a terminal, one line on stderr that shards finishing rewrite; elsewhere (a log file,
    CI) nothing: Prefect's log lines say the same, one per event."""
    from flows.prm import CONSOLE

    if not sys.stderr.isatty():
        yield
        return

    def show(text: str) -> None:
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)

    CONSOLE.append(show)
    try:
        yield
    finally:
        CONSOLE.remove(show)
        print(file=sys.stderr)
