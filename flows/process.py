"""Prefect, process-wide: what `mshep run` sets up around the flow. Prefect's environment before
Prefect is imported (no telemetry calls from an offline machine, a start-up limit for the
temporary server that holds on a loaded 2-core machine), the temporary API server started
before Prefect is imported, a clear message when a configured API cannot be reached, and
interrupts that stop at once, keep what finished and say how to resume."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

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


class TemporaryServer:
    """The Prefect API server of one `mshep run` without a configured one, started by the CLI
    before it imports Prefect: the server boots on another core while the CLI imports Prefect
    and the flow (~2 s), and the CLI never imports Prefect's server module (~2.6 s). Prefect's
    own temporary server would start only once the flow is called, after both. The command and
    environment are those Prefect uses for its own (`SubprocessASGIServer`). Like Prefect's, it
    lives until the process exits (Prefect's log and event workers flush to it then): stopped
    at exit, on an interrupt, and by the kernel if the CLI is killed."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Any) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}/api"
        atexit.register(self.stop)  # after Prefect's own exit hooks: they flush to it first
        STOP_AT_INTERRUPT.append(self.stop)

    @classmethod
    def start(cls, config: RunConfig) -> TemporaryServer | None:
        """Started when the run would get a temporary server anyway: no PREFECT_API_URL in
        the environment, threads (a Ray run needs a server its workers reach), and Prefect
        not yet imported (a Python caller or a test harness has set up its own). A profile
        that sets an API URL is only known once Prefect is imported: `use` then stops it."""
        if (
            os.environ.get("PREFECT_API_URL")
            or config.execution.task_runner != "threads"
            or "prefect" in sys.modules
        ):
            return None
        spec = importlib.util.find_spec("prefect")  # where it is, without importing it
        if spec is None or not spec.submodule_search_locations:
            return None
        app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        command = [
            sys.executable, "-m", "uvicorn", "--app-dir", app_dir,
            "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "error", "--lifespan", "on",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        log = tempfile.TemporaryFile()  # noqa: SIM115  (open for the server's life)
        parent = os.getpid()
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        return cls(process, port, log)

    def use(self) -> contextlib.AbstractContextManager[Any]:
        """After Prefect is imported: wait until the server answers and point this process's
        Prefect at it; or, when the profile names an API after all, stop it and use that."""
        import httpx
        from prefect.settings import PREFECT_API_URL, temporary_settings

        if PREFECT_API_URL.value():
            self.stop()
            return contextlib.nullcontext()
        deadline = time.monotonic() + float(STARTUP_TIMEOUT_S)
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                said = " ".join(self.log.read().decode(errors="replace").split()[-40:])
                raise ConfigError(
                    f"the temporary Prefect server exited ({self.process.returncode}): "
                    f"{said or 'no output'}; start one (`prefect server start`) and set "
                    "PREFECT_API_URL"
                )
            with contextlib.suppress(httpx.HTTPError):
                answered = httpx.get(f"{self.url}/health", timeout=2).status_code == 200
                if answered and self.process.poll() is None:  # ours, not one on a reused port
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(
                    f"the temporary Prefect server did not answer within {STARTUP_TIMEOUT_S} s; "
                    "start one (`prefect server start`) and set PREFECT_API_URL"
                )
            time.sleep(0.1)
        return temporary_settings(updates={PREFECT_API_URL: self.url})

    def stop(self) -> None:
        """Stop it (its shutdown flushes the database), killed after 5 s; safe to repeat."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(ValueError):
            STOP_AT_INTERRUPT.remove(self.stop)


def _die_with_parent(parent: int) -> None:
    """In the server's process before it runs (Linux): SIGTERM when the CLI dies, even by
    SIGKILL, so a killed run leaves no server behind; a CLI that died before this ran is
    seen as a new parent, and the server does not start."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


# What an interrupt stops before the process exits at once (`os._exit` skips atexit).
STOP_AT_INTERRUPT: list[Any] = []


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
        for halt in list(STOP_AT_INTERRUPT):
            with contextlib.suppress(Exception):
                halt()
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
