"""Network: a simulated OpenAI-compatible maths model on loopback HTTP, for tests and dry runs.

It answers mshep's generator and completer prompts for the problems of a GSM8K-style jsonl with
their reference steps, corrupting steps at configured rates, and records the truth (the first
wrong step of every solution) so labels can be checked. A latency model (`slots` concurrent
requests, time per token) makes throughput measurable, and faults (500, 429, stalls, truncated
bodies) can be injected at configured rates.

    with SimulatedMathModel(SimulatorConfig(p_wrong_step=0.2), "test.jsonl") as sim:
        client = OpenAI(base_url=sim.base_url, api_key="unused")
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from mshep.errors import ConfigError, MshepError
from mshep.testing.sim_app import Reply, SimulatorApp, error_reply, json_reply
from mshep.testing.sim_config import SimulatorConfig, SimulatorStats
from mshep.testing.sim_solutions import ReferenceProblem, load_reference


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled (timeout-fault) request must not block shutdown
    request_queue_size = 1024  # the default backlog of 5 resets connections under load
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: SimulatorApp) -> None:
        super().__init__(address, _Handler)
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.connections_lock:
            self.connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """What a server that dies does to its clients: every open connection, kept-alive
        ones included, is cut (a stopped listener alone would keep answering on those)."""
        with self.connections_lock:
            connections, self.connections = list(self.connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real inference servers do
    disable_nagle_algorithm = True  # else delayed ACKs add 40 ms to every keep-alive reply
    timeout = 120  # seconds an idle keep-alive connection holds its thread

    def _app(self) -> SimulatorApp:
        assert isinstance(self.server, _Server)
        return self.server.app

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            self._send(self._app().models())
        elif path in ("/stats", "/v1/stats"):
            self._send(json_reply(200, self._app().stats().model_dump()))
        elif path in ("/health", ""):
            self._send(json_reply(200, {"status": "ok"}))
        else:
            self._send(error_reply(404, f"no route GET {path}", "not_found_error"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path in ("/v1/chat/completions", "/chat/completions"):
            self._send(self._app().chat(body))
        elif path == "/truth":
            self._send(self._app().truth(body))
        else:
            self._send(error_reply(404, f"no route POST {path}", "not_found_error"))

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except ConnectionError:
            self.close_connection = True  # the client gave up (its timeout); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown the test and dry-run output


class SimulatedMathModel:
    """The server and its Python API: start/stop (or `with`), stats, and the truth."""

    def __init__(self, config: SimulatorConfig | None, data_path: str | Path) -> None:
        self.config = config or SimulatorConfig()
        self.data_path = Path(data_path)
        self.app = SimulatorApp(self.config, load_reference(self.data_path))
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        """http://host:port, once started."""
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL: http://host:port/v1."""
        return f"{self.url}/v1"

    def _bind(self) -> _Server:
        if self._server is None:
            self.app.stopping.clear()
            try:
                self._server = _Server((self.config.host, self.config.port), self.app)
            except OSError as error:
                raise ConfigError(_bind_problem(self.config, error)) from None
        return self._server

    def start(self) -> str:
        """Serve in a background thread; returns the base URL."""
        if self._thread is None:
            server = self._bind()
            self._serving = True
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self.base_url

    def serve_forever(self, ready: Callable[[str], None] | None = None) -> None:
        """Serve in this thread until interrupted (the CLI); `ready` gets the base URL first."""
        server = self._bind()
        if ready is not None:
            ready(self.base_url)
        self._serving = True
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            self.stop()

    def stop(self) -> None:
        """Wake every simulated wait, stop serving and free the port; safe to call twice."""
        self.app.stopping.set()
        server, self._server = self._server, None
        if server is not None:
            if self._serving:  # shutdown() waits forever on a server that never served
                server.shutdown()
            server.cut_connections()
            server.server_close()
        self._serving = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SimulatedMathModel:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> SimulatorStats:
        return self.app.stats()

    def reset_stats(self) -> None:
        self.app.reset_stats()

    def reference(self, question: str) -> ReferenceProblem:
        return self.app.reference(question)

    def first_wrong_step(self, question: str, steps: list[str]) -> int | None:
        """Exact truth for any solution: its first step that differs from the reference."""
        return self.app.first_wrong_step(question, steps)

    def recorded_truth(self, question: str, steps: list[str]) -> int | None:
        """The first wrong step recorded when this solution was generated; KeyError if never."""
        return self.app.recorded_truth(question, steps)


def _bind_problem(config: SimulatorConfig, error: OSError) -> str:
    where = f"{config.host}:{config.port}"
    if error.errno == errno.EADDRINUSE:
        return (
            f"port {config.port} on {config.host} is in use: stop what holds it, or pick "
            "another with --port (0 picks a free one)"
        )
    return f"cannot listen on {where} (--host, --port): {error.strerror or error}"


_CONVERTERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mshep-simulate", description="Serve a simulated OpenAI-compatible maths model."
    )
    parser.add_argument("--data", required=True, type=Path, help="GSM8K-style jsonl.")
    # One flag per config field, so the CLI never lags behind the config.
    for name, info in SimulatorConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = 8000 if name == "port" else info.default  # a CLI user wants a known port
        if info.annotation is bool:
            action: Any = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=default, help=info.description)
        else:
            convert = _CONVERTERS[info.annotation]
            parser.add_argument(flag, type=convert, default=default, help=info.description)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[SimulatorConfig, Path]:
    """Command line → (config, data path)."""
    args = vars(_parser().parse_args(argv))
    data = args.pop("data")
    return SimulatorConfig(**args), data


def _settings_problem(error: ValidationError) -> str:
    """Bad simulator settings as one line naming each flag and the value given."""
    problems = []
    for item in error.errors():
        flag = "--" + "-".join(str(p) for p in item["loc"]).replace("_", "-")
        given = f" (got {item['input']!r})" if item["loc"] else ""
        problems.append(f"{flag if item['loc'] else 'settings'}: {item['msg']}{given}")
    return "; ".join(problems)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C, printing the base URL first and the stats last. A bad setting, data
    file or port is one line on stderr (exit 2, or 1), never a traceback."""
    try:
        config, data = parse_args(argv)
    except ValidationError as error:
        print(f"error: {_settings_problem(error)}", file=sys.stderr)
        return 2
    try:
        sim = SimulatedMathModel(config, data)

        def announce(base_url: str) -> None:
            print(f"simulated model {config.model_name!r} at {base_url}", flush=True)

        with contextlib.suppress(KeyboardInterrupt):
            sim.serve_forever(ready=announce)
    except MshepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(sim.stats().model_dump_json(indent=2), flush=True)
    return 0
