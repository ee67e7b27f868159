"""HttpBackend against a scripted OpenAI-compatible server on 127.0.0.1 (real HTTP, no mocks).

The server answers each request with the next scripted `Step` (or what a function returns) and
records what it saw, when, and how many requests it was serving at once, so concurrency and
retry timing are measured on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mshep.backends import make_backend
from mshep.backends.base import GenerationRequest
from mshep.backends.http import HttpBackend
from mshep.config import ServingConfig
from mshep.errors import BackendUnavailable, MissingToken
from mshep.prompts import response_format

TOKEN_ENV = "MSHEP_TEST_TOKEN"
DATA = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"


@dataclass
class Step:
    """One scripted answer; body None means a good chat completion built from the request."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    payload: Any
    arrived: float
    finished: float = 0.0


def completion_body(payload: dict[str, Any], choices: int | None = None) -> dict[str, Any]:
    """Echo the last message, the choice index and the seed, so tests can match replies."""
    n = choices if choices is not None else payload.get("n") or 1
    last = payload["messages"][-1]["content"]
    return {
        "id": "cmpl-test",
        "object": "chat.completion",
        "model": "served-model",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{last}|{i}|{payload.get('seed')}"},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n},
    }


Script = Sequence[Step] | Callable[[Seen], Step]


class ScriptedServer:
    def __init__(self, script: Script = ()) -> None:
        self.respond = script if callable(script) else None
        self.queue: deque[Step] = deque(() if callable(script) else script)
        self.models_step = Step(body={"object": "list", "data": [{"id": "served-model"}]})
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # wakes delayed handlers at teardown
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.httpd.request_queue_size = 256
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def posts(self) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == "POST"]

    def step_for(self, seen: Seen) -> Step:
        with self.lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if seen.method == "GET":
                return self.models_step
            if self.respond is not None:
                return self.respond(seen)
            return self.queue.popleft() if self.queue else Step()

    def done(self, seen: Seen) -> None:
        with self.lock:
            self.in_flight -= 1
            seen.finished = seen.finished or time.monotonic()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve(None)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._serve(json.loads(raw) if raw else None)

        def _serve(self, payload: Any) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            seen = Seen(self.command, self.path, headers, payload, time.monotonic())
            step = server.step_for(seen)
            try:
                server.stopping.wait(step.delay_s)
            finally:
                # Done before the reply: the client may send its next request at once, and
                # counting this one still in flight then would over-count the client's bound.
                seen.finished = time.monotonic()
                server.done(seen)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(step, payload)  # (the client may have timed out and left)

        def _send(self, step: Step, payload: Any) -> None:
            body = step.body if step.body is not None else completion_body(payload)
            data = (
                body
                if isinstance(body, bytes)
                else body.encode()
                if isinstance(body, str)
                else (json.dumps(body).encode())
            )
            self.send_response(step.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in step.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(script: Script = ()) -> ScriptedServer:
        started.append(ScriptedServer(script))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def backend_for(server: ScriptedServer | None, **overrides: Any) -> HttpBackend:
    values: dict[str, Any] = {"token_env": TOKEN_ENV, "max_retries": 2, "timeout_s": 5.0}
    values["base_url"] = server.base_url if server is not None else None
    config = ServingConfig(**(values | overrides))
    return HttpBackend(config, backoff_s=0.01, max_backoff_s=0.05)


def ask(text: str = "hello", **fields: Any) -> GenerationRequest:
    fields.setdefault("model", "test-model")
    return GenerationRequest(messages=[{"role": "user", "content": text}], **fields)


def run(backend: HttpBackend, requests: list[GenerationRequest]) -> list[Any]:
    with backend:
        return backend.generate(requests)


def test_batch_is_concurrent_bounded_and_in_order(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda seen: Step(delay_s=0.2))
    requests = [ask(f"q{i}") for i in range(50)]
    started = time.monotonic()
    results = run(backend_for(server, concurrency=16), requests)
    elapsed = time.monotonic() - started
    assert 10 <= server.max_in_flight <= 16
    assert elapsed < 50 * 0.2 / 2  # serial would take 10 s; four rounds of 16 take about 0.8 s
    assert [r.completions[0].text.split("|")[0] for r in results] == [f"q{i}" for i in range(50)]
    assert all(r.error is None for r in results)


def test_a_slow_request_does_not_hold_back_the_rest(serve: Callable[..., ScriptedServer]) -> None:
    # Waves (gather over chunks) would wait for the slow one before starting the next chunk.
    server = serve(
        lambda seen: Step(delay_s=1.0 if seen.payload["messages"][0]["content"] == "q0" else 0.05)
    )
    run(backend_for(server, concurrency=4), [ask(f"q{i}") for i in range(24)])
    slow = next(s for s in server.posts() if s.payload["messages"][0]["content"] == "q0")
    assert max(s.arrived for s in server.posts()) < slow.finished


def test_500_then_200_succeeds_after_one_retry(serve: Callable[..., ScriptedServer]) -> None:
    server = serve([Step(500, {"error": "boom"}), Step()])
    backend = backend_for(server)
    [result] = run(backend, [ask()])
    assert result.error is None and result.completions[0].text == "hello|0|None"
    assert len(server.posts()) == 2
    assert backend.stats.as_dict() == {"requests": 2, "retries": 1, "failures": 0}


def test_429_retry_after_is_honoured(serve: Callable[..., ScriptedServer]) -> None:
    server = serve([Step(429, {"error": "slow down"}, {"Retry-After": "1"}), Step()])
    [result] = run(backend_for(server), [ask()])
    first, second = server.posts()
    assert result.error is None
    assert second.arrived - first.arrived >= 0.95  # the backoff alone would be ~0.02 s


def test_malformed_200_is_retried(serve: Callable[..., ScriptedServer]) -> None:
    server = serve([Step(200, '{"choices": [{"mess'), Step(200, {"no": "choices"}), Step()])
    [result] = run(backend_for(server), [ask()])
    assert result.error is None and result.completions[0].text == "hello|0|None"
    assert len(server.posts()) == 3


def test_400_fails_without_retry(serve: Callable[..., ScriptedServer]) -> None:
    server = serve([Step(400, {"error": "bad max_tokens"}), Step()])
    backend = backend_for(server)
    [result] = run(backend, [ask(n=2)])
    assert len(server.posts()) == 1
    assert result.error is not None and "HTTP 400" in result.error
    assert [c.finish_reason for c in result.completions] == ["error", "error"]
    assert backend.stats.failures == 1


def test_401_says_the_token_was_refused(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "sk-wrong")
    server = serve([Step(401, {"error": "invalid api key"})])
    [result] = run(backend_for(server), [ask()])
    assert len(server.posts()) == 1
    assert result.error is not None and f"refused the token in {TOKEN_ENV}" in result.error


def test_always_500_fails_after_max_retries(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda seen: Step(500, {"error": "down"}))
    backend = backend_for(server, max_retries=2)
    [result] = run(backend, [ask()])
    assert len(server.posts()) == 3
    assert result.error is not None and "HTTP 500 after 3 attempts" in result.error
    assert backend.stats.as_dict() == {"requests": 3, "retries": 2, "failures": 1}


def test_timeouts_are_retried_then_fail(serve: Callable[..., ScriptedServer]) -> None:
    server = serve(lambda seen: Step(delay_s=3.0))
    [result] = run(backend_for(server, timeout_s=0.5, max_retries=1), [ask()])
    assert len(server.posts()) == 2
    assert result.error is not None and "timed out" in result.error


def test_without_n_support_sends_n_requests_with_distinct_seeds(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve()
    [result] = run(backend_for(server, supports_n=False), [ask(n=3, seed=7)])
    payloads = [seen.payload for seen in server.posts()]
    assert sorted(p["seed"] for p in payloads) == [7, 8, 9]
    assert all("n" not in p for p in payloads)
    assert sorted(c.text for c in result.completions) == ["hello|0|7", "hello|0|8", "hello|0|9"]
    assert result.usage.requests == 3 and result.usage.prompt_tokens == 30
    assert all(c.completion_tokens == 5 for c in result.completions)


def test_without_n_support_a_failed_call_is_one_error_completion(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda seen: Step(400, {"error": "no"}) if seen.payload["seed"] == 8 else Step())
    [result] = run(backend_for(server, supports_n=False), [ask(n=3, seed=7)])
    assert sorted(c.finish_reason for c in result.completions) == ["error", "stop", "stop"]
    assert result.error is not None and result.error.startswith("1 of 3 calls failed")


def test_with_n_support_one_request_and_short_replies_kept(
    serve: Callable[..., ScriptedServer],
) -> None:
    server = serve(lambda seen: Step(body=completion_body(seen.payload, choices=2)))
    [result] = run(backend_for(server), [ask(n=4, seed=1)])
    [seen] = server.posts()
    assert seen.payload["n"] == 4
    assert [c.text for c in result.completions] == ["hello|0|1", "hello|1|1"]
    assert result.error is None and result.model == "served-model"


def test_payload_carries_the_request_as_given(serve: Callable[..., ScriptedServer]) -> None:
    server = serve()
    fmt = response_format({"title": "Solution", "type": "object", "required": ["answer"]})
    request = ask(
        max_tokens=77, temperature=0.3, top_p=0.9, seed=5, stop=["\n\n"], response_format=fmt
    )
    request = request.model_copy(update={"model": "other-model"})
    run(backend_for(server), [request])
    [seen] = server.posts()
    assert seen.path == "/v1/chat/completions"
    payload = seen.payload
    assert payload["model"] == "other-model"
    assert payload["messages"] == [{"role": "user", "content": "hello"}]
    assert (payload["max_tokens"], payload["seed"], payload["stop"]) == (77, 5, ["\n\n"])
    assert (payload["temperature"], payload["top_p"]) == (0.3, 0.9)
    assert payload["response_format"] == fmt  # not rewritten into TGI's grammar


def test_replies_map_to_completions(serve: Callable[..., ScriptedServer]) -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "cut"},
                "finish_reason": "length",
            },
            {"index": 1, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "eos"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
    }
    server = serve([Step(body=body)])
    [result] = run(backend_for(server), [ask(n=2)])
    assert [(c.text, c.finish_reason) for c in result.completions] == [
        ("cut", "length"),
        ("ok", "stop"),
    ]
    assert (result.usage.requests, result.usage.prompt_tokens) == (1, 3)
    assert result.usage.completion_tokens == 9
    assert result.model == "test-model"  # the reply named none


def test_token_is_sent_but_never_shown(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "sk-secret-123")
    server = serve()
    backend = backend_for(server)
    with backend:
        backend.generate([ask()])
        assert "sk-secret-123" not in repr(backend)
        assert b"sk-secret-123" not in pickle.dumps(backend)
        assert "sk-secret-123" not in repr(backend.__getstate__())
    assert server.posts()[0].headers["authorization"] == "Bearer sk-secret-123"


def test_no_hub_token_is_sent_to_a_custom_server(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub falls back to the Hub token; a third-party server must not receive it.
    monkeypatch.setenv("HF_TOKEN", "hf_not_for_this_server")
    server = serve()
    [result] = run(backend_for(server), [ask()])
    assert result.error is None
    assert "authorization" not in server.posts()[0].headers


def test_missing_token_without_base_url_names_the_variable() -> None:
    backend = backend_for(None)
    with pytest.raises(MissingToken, match=TOKEN_ENV):
        backend.__enter__()
    with pytest.raises(MissingToken, match=TOKEN_ENV):
        backend.check()


def test_check_passes_against_a_live_server(serve: Callable[..., ScriptedServer]) -> None:
    server = serve()
    backend_for(server).check()
    assert [(s.method, s.path) for s in server.seen] == [("GET", "/v1/models")]


def test_check_unreachable_port_names_the_url() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago, now closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    backend = HttpBackend(ServingConfig(base_url=url, token_env=TOKEN_ENV))
    with pytest.raises(BackendUnavailable, match=f"cannot reach {url}"):
        backend.check()


def test_check_refused_token(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "sk-wrong")
    server = serve()
    server.models_step = Step(403, {"error": "forbidden"})
    with pytest.raises(BackendUnavailable, match=f"refused the token in {TOKEN_ENV}"):
        backend_for(server).check()


def test_hub_offline_mode_fails_fast_and_check_says_why(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # huggingface_hub refuses every call in offline mode, even to a local server.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    server = serve()
    backend = backend_for(server)
    with pytest.raises(BackendUnavailable, match="HF_HUB_OFFLINE"):
        backend.check()
    [result] = run(backend, [ask()])
    assert result.error is not None and "HF_HUB_OFFLINE" in result.error
    assert backend.stats.retries == 0 and server.seen == []


def test_generate_works_inside_a_running_event_loop(serve: Callable[..., ScriptedServer]) -> None:
    server = serve()

    async def caller() -> list[Any]:
        return run(backend_for(server), [ask("a"), ask("b")])

    results = asyncio.run(caller())
    assert [r.completions[0].text for r in results] == ["a|0|None", "b|0|None"]


def test_make_backend() -> None:
    backend = make_backend(ServingConfig(base_url="http://127.0.0.1:1/v1"))
    assert isinstance(backend, HttpBackend) and backend.name == "http"
    assert make_backend(ServingConfig(kind="vllm")).name == "vllm"  # ray only when it sends


def test_importing_backends_loads_no_huggingface_hub() -> None:
    code = (
        "import sys, mshep.backends\n"
        "from mshep.backends import make_backend\n"
        "print('huggingface_hub' in sys.modules or 'tenacity' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_simulated_maths_model_through_faults() -> None:
    simulator = pytest.importorskip("mshep.testing.simulator")
    from mshep.prompts import PromptConfig, generator_messages
    from mshep.testing.sim_config import SimulatorConfig

    questions = [json.loads(line)["question"] for line in DATA.read_text().splitlines()[:8]]
    config = SimulatorConfig(p_500=0.2, p_malformed=0.1, fault_seed=3, base_latency_s=0.0)
    with simulator.SimulatedMathModel(config, DATA) as sim:
        backend = HttpBackend(
            ServingConfig(base_url=sim.base_url, token_env=TOKEN_ENV, max_retries=8),
            backoff_s=0.01,
            max_backoff_s=0.05,
        )
        requests = [
            GenerationRequest(
                messages=generator_messages(q, PromptConfig()), n=2, seed=i, model="mshep-simulated"
            )
            for i, q in enumerate(questions)
        ]
        results = run(backend, requests)
    assert [r.error for r in results] == [None] * len(requests)
    assert all(len(r.completions) == 2 for r in results)
    assert all("The answer is" in (c.text or "") for r in results for c in r.completions)
    assert backend.stats.retries > 0


def test_check_sends_one_tiny_real_request(serve: Callable[..., ScriptedServer]) -> None:
    server = serve()
    backend_for(server).check("served-model")
    assert [(s.method, s.path) for s in server.seen] == [
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ]
    assert server.seen[1].payload["max_tokens"] == 1


def test_check_rejects_a_server_that_answers_html(serve: Callable[..., ScriptedServer]) -> None:
    """A proxy's login page with status 200: not an OpenAI chat completion, so not a model."""
    page = "<html><body>Please sign in</body></html>"
    server = serve([Step(200, page, {"content-type": "text/html"})])
    with pytest.raises(BackendUnavailable, match="malformed reply") as raised:
        backend_for(server).check("served-model")
    assert "one-token test request for 'served-model'" in str(raised.value)
    assert len([s for s in server.seen if s.method == "POST"]) == 1  # no retries in a check


def test_a_token_read_from_a_secret_store_is_sent_and_kept_out_of_repr_and_pickles(
    serve: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    server = serve()
    backend = HttpBackend(
        ServingConfig(base_url=server.base_url, token_env=TOKEN_ENV), token="sk-from-block"
    )
    run(backend, [ask("a")])
    assert server.seen[0].headers.get("authorization") == "Bearer sk-from-block"
    assert "sk-from-block" not in repr(backend)
    assert b"sk-from-block" not in pickle.dumps(backend)


# --- one bound per endpoint in a process ----------------------------------------------------


def test_tasks_in_threads_share_one_bound_per_endpoint(
    serve: Callable[..., ScriptedServer],
) -> None:
    """Four stage tasks in four threads, each with its own backend: together they never have
    more than `concurrency` requests at the server (a bound per task would allow 4 × 6)."""
    server = serve(lambda seen: Step(delay_s=0.1))
    results: list[list[Any]] = []

    def task(index: int) -> None:
        results.append(
            run(backend_for(server, concurrency=6), [ask(f"t{index}-{i}") for i in range(12)])
        )

    threads = [threading.Thread(target=task, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4 and all(r.error is None for batch in results for r in batch)
    assert server.max_in_flight == 6
    assert len(server.posts()) == 48


def test_a_freed_slot_goes_to_labelling_before_generation() -> None:
    """The slots themselves: waiters of priority LABELLING are served before GENERATION ones
    that came earlier; a cancelled waiter passes its turn on."""
    import asyncio

    from mshep.backends.http import GENERATION, LABELLING, _Slots

    async def scenario() -> list[str]:
        slots, order = _Slots(1), []
        await slots.acquire(GENERATION)  # the one slot is busy

        async def wait(name: str, priority: int) -> None:
            await slots.acquire(priority)
            order.append(name)
            slots.release()

        waiting = [
            asyncio.create_task(wait("generate-1", GENERATION)),
            asyncio.create_task(wait("generate-2", GENERATION)),
            asyncio.create_task(wait("cancelled", LABELLING)),
            asyncio.create_task(wait("label", LABELLING)),
        ]
        await asyncio.sleep(0.01)  # all four queued
        waiting[2].cancel()
        slots.release()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert slots.free == 1 and not slots.waiting
        return order

    assert asyncio.run(scenario()) == ["label", "generate-1", "generate-2"]
