"""No round barrier: each candidate's next probe goes out as soon as its last one is back, while
the other candidates' probes are still in flight; the labels are those of the round-by-round
(wave) driver on the same seeds.

The wave driver is what a backend without `stream` gets (`Waves` below hides the HTTP backend's
`stream`, so the same server is asked both ways). Ordering is checked on the server side, by
what arrived before what; no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mshep.backends.base import (
    Backend,
    BackendBase,
    Completion,
    FollowUp,
    GenerationRequest,
    GenerationResult,
    Streaming,
)
from mshep.backends.fake import FakeBackend, StreamingFake
from mshep.backends.http import HttpBackend
from mshep.batches import stream_backend
from mshep.completion import Labelled, label_solutions
from mshep.config import CompleterConfig, GeneratorConfig, ServingConfig
from mshep.failures import RequestTally
from mshep.generation import generate_solutions
from mshep.labelling import LabelTarget
from mshep.records import Hard, Problem
from mshep.references import parse_reference_answer
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig
from tests.helpers import make_target, prefix_len_of

DATA = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"
TOKEN_ENV = "MSHEP_TEST_TOKEN"
GOLDEN, WRONG = "18", "7"


class Waves(BackendBase):
    """Another backend's `generate` alone: streamed work comes to it in waves (the barrier)."""

    name = "waves"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        return self.inner.generate(requests)


@pytest.fixture(autouse=True)
def _no_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def http(base_url: str, concurrency: int = 64) -> HttpBackend:
    config = ServingConfig(
        base_url=base_url,
        token_env=TOKEN_ENV,
        concurrency=concurrency,
        max_retries=0,
        timeout_s=60.0,
        circuit_breaker=0,
    )
    return HttpBackend(config, backoff_s=0.01, max_backoff_s=0.05)


def same_outcome(streamed: Labelled, waves: Labelled) -> None:
    """Labels, rollout counts, soft values and usage per candidate, and the shard's totals."""
    assert streamed.solutions == waves.solutions
    assert streamed.usage == waves.usage
    assert (streamed.prefixes, streamed.rounds, streamed.resampled) == (
        waves.prefixes,
        waves.rounds,
        waves.resampled,
    )
    assert (streamed.tally.requests, streamed.tally.failed) == (
        waves.tally.requests,
        waves.tally.failed,
    )


# --- a scripted backend: labels do not depend on the order results come back in ----------


def seeded_responder(first_bad: dict[str, int]) -> Callable[[GenerationRequest], list[Any]]:
    """Rollouts from prefix k of problem p reach the golden answer iff k < first_bad[p]; a
    quarter of the replies (drawn from the request's seed) cannot be read, so re-samples happen."""

    def respond(request: GenerationRequest) -> list[Any]:
        rng = random.Random(request.seed)
        _, problem, _, prefix = request.tag.split("/")
        answer = GOLDEN if int(prefix) < first_bad[problem] else WRONG
        return [
            "Step 9: so she" if rng.random() < 0.25 else f"Step 9: done. The answer is: {answer}"
            for _ in range(request.n)
        ]

    return respond


def scripted_shard() -> tuple[list[LabelTarget], dict[str, int]]:
    targets, first_bad = [], {}
    for steps in range(1, 13):
        for bad in range(1, steps + 1):
            problem = f"L{steps}-bad{bad}"
            first_bad[problem] = bad
            targets += [
                make_target(steps=steps, answer=WRONG, problem_id=problem, index=0),
                make_target(steps=steps, answer=GOLDEN, problem_id=problem, index=1),
            ]
    return targets, first_bad


SETTINGS = [
    {"N": 4},
    {"N": 4, "witness": False},
    {"N": 2, "strategy": "per_step", "witness": False},
    {"N": 3, "resample": 0},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_streamed_labels_equal_the_wave_labels_on_a_scripted_shard(
    settings: dict[str, Any],
) -> None:
    targets, first_bad = scripted_shard()
    cfg = CompleterConfig(**settings)
    waves = label_solutions(FakeBackend(responder=seeded_responder(first_bad)), targets, cfg)
    assert waves.resampled or not cfg.resample
    for seed in range(3):  # three different arrival orders
        backend = StreamingFake(responder=seeded_responder(first_bad), seed=seed)
        streamed = label_solutions(backend, targets, cfg)
        same_outcome(streamed, waves)
        assert streamed.tally.requests == len(backend.requests)
        assert backend.max_in_flight > 1  # answered out of order, from many in flight


def test_without_streaming_a_backend_gets_one_call_per_wave() -> None:
    targets, first_bad = scripted_shard()
    backend = FakeBackend(responder=seeded_responder(first_bad))
    out = label_solutions(backend, targets, CompleterConfig(N=4, resample=0))
    assert not isinstance(backend, Streaming)
    assert len(backend.calls) == out.rounds == 4  # ceil(log2 12): the longest search
    assert out.tally.requests == len(backend.requests) == out.prefixes


# --- the simulated model over real HTTP ----------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(), DATA) as model:
        yield model


def problems(limit: int) -> list[Problem]:
    found = []
    with DATA.open(encoding="utf-8") as lines:
        for index, line in zip(range(limit), lines, strict=False):
            row = json.loads(line)
            answer = parse_reference_answer(row["answer"], "gsm8k")
            assert isinstance(answer, str)
            found.append(Problem(id=str(index), question=row["question"], reference_answer=answer))
    return found


@pytest.fixture(scope="module")
def sim_shard(sim: SimulatedMathModel) -> list[LabelTarget]:
    asked = problems(30)
    with http(sim.base_url) as backend:
        out = generate_solutions(backend, asked, GeneratorConfig(M=4, model="sim"), 4, "generate")
    return [
        LabelTarget(p.id, p.question, p.reference_answer or "", solution)
        for p in asked
        for solution in out.solutions[p.id]
    ]


@pytest.mark.parametrize("witness", [True, False])
def test_streamed_labels_equal_the_wave_labels_on_the_simulated_model(
    sim: SimulatedMathModel, sim_shard: list[LabelTarget], witness: bool
) -> None:
    cfg = CompleterConfig(N=4, model="sim", witness=witness)
    with http(sim.base_url) as backend:
        waves_backend = Waves(backend)
        waves = label_solutions(waves_backend, sim_shard, cfg)
        streamed = label_solutions(backend, sim_shard, cfg)
    same_outcome(streamed, waves)
    assert waves_backend.calls >= waves.rounds >= 3  # searches of several probes each
    assert {label.hard for item in streamed.solutions for label in item.labels} == {
        Hard.GOOD,
        Hard.BAD,
    }
    assert streamed.tally.failed == 0


# --- a loopback server that records what arrived when -------------------------------------


@dataclass
class Seen:
    problem: str
    prefix: int
    arrived: float
    finished: float = 0.0


class Loopback:
    """Answers completer prompts of `make_target` candidates: rollouts from prefix k of problem
    p reach the golden answer iff k < first_bad[p]. `hold(seen)` runs before each reply (in the
    request's thread); every request is recorded with its arrival and finish times."""

    def __init__(self, first_bad: dict[str, int], hold: Callable[[Seen], None]) -> None:
        self.first_bad = first_bad
        self.hold = hold
        self.seen: list[Seen] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def arrived(self, problem: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.problem == problem]

    def reply(self, payload: dict[str, Any]) -> bytes:
        user = payload["messages"][-1]["content"]
        match = re.search(r"question (\S+)\?", user)
        assert match, user
        seen = Seen(match.group(1), prefix_len_of(user), time.monotonic())
        with self.lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.hold(seen)
        finally:
            with self.lock:
                self.in_flight -= 1
                seen.finished = time.monotonic()
        answer = GOLDEN if seen.prefix < self.first_bad[seen.problem] else WRONG
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"Step 9: so. The answer is: {answer}"},
                "finish_reason": "stop",
            }
            for i in range(payload.get("n") or 1)
        ]
        usage = {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}
        body = {"object": "chat.completion", "model": "m", "choices": choices, "usage": usage}
        return json.dumps(body).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = server.reply(json.loads(raw))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def loopback() -> Iterator[Callable[..., Loopback]]:
    started: list[Loopback] = []

    def start(first_bad: dict[str, int], hold: Callable[[Seen], None]) -> Loopback:
        started.append(Loopback(first_bad, hold))
        return started[-1]

    yield start
    for server in started:
        server.stop()


# "fast" (8 steps, first bad 6) needs probes 4, 6, 5, one after another; "slow" one probe.
FAST_AND_SLOW = {"fast": 6, "slow": 1}


def fast_and_slow() -> list[LabelTarget]:
    return [
        make_target(steps=2, answer=WRONG, problem_id="slow"),
        make_target(steps=8, answer=WRONG, problem_id="fast"),
    ]


def hold_slow_until_fast_is_done(wait_s: float) -> tuple[Callable[[Seen], None], threading.Event]:
    """The slow probe is answered once the fast candidate's third probe has arrived, or after
    `wait_s` (a driver that waits for the slow probe never sends that third probe)."""
    fast_done = threading.Event()

    def hold(seen: Seen) -> None:
        if seen.problem == "fast" and seen.prefix == 5:
            fast_done.set()
        if seen.problem == "slow":
            fast_done.wait(wait_s)

    return hold, fast_done


def test_a_candidates_next_probe_does_not_wait_for_a_slow_probe_of_another(
    loopback: Callable[..., Loopback],
) -> None:
    hold, fast_done = hold_slow_until_fast_is_done(wait_s=30.0)
    server = loopback(FAST_AND_SLOW, hold)
    with http(server.base_url) as backend:
        out = label_solutions(backend, fast_and_slow(), CompleterConfig(N=4))
    assert fast_done.is_set()
    (slow,) = server.arrived("slow")
    fast = server.arrived("fast")
    assert [seen.prefix for seen in fast] == [4, 6, 5]
    assert all(seen.finished <= slow.finished for seen in fast)  # all three while slow was held
    assert [item.first_bad_step for item in out.solutions] == [1, 6]
    assert out.rounds == 3


def test_the_wave_driver_holds_the_next_probe_until_the_slowest_is_back(
    loopback: Callable[..., Loopback],
) -> None:
    # The contrast: the barrier this issue removes. The slow probe gives up waiting after 0.2 s.
    hold, _ = hold_slow_until_fast_is_done(wait_s=0.2)
    server = loopback(FAST_AND_SLOW, hold)
    with http(server.base_url) as backend:
        waves = label_solutions(Waves(backend), fast_and_slow(), CompleterConfig(N=4))
    (slow,) = server.arrived("slow")
    fast = server.arrived("fast")
    assert [seen.prefix for seen in fast] == [4, 6, 5]
    assert fast[0].arrived < slow.finished  # the first probes went out together
    assert all(seen.arrived >= slow.finished for seen in fast[1:])  # the next ones waited
    with http(server.base_url) as backend:
        streamed = label_solutions(backend, fast_and_slow(), CompleterConfig(N=4))
    assert streamed.solutions == waves.solutions


def test_the_stream_keeps_the_endpoint_bound_full_until_the_work_runs_out(
    loopback: Callable[..., Loopback],
) -> None:
    # Six candidates of 16 steps, first bad step 16: four probes each (8, 12, 14, 15), one
    # after another, so each unfinished candidate always has exactly one request outstanding.
    # The server holds every request until min(bound, unfinished candidates) are at the server
    # together: the stream must keep the bound full while there is work for it. A driver with a
    # round barrier would leave a round's last requests alone there (they give up after 20 s).
    bound, names = 4, [f"c{i}" for i in range(6)]
    unfinished = set(names)
    at_server = 0
    starved: list[Seen] = []
    turn = threading.Condition()

    def hold(seen: Seen) -> None:
        nonlocal at_server
        with turn:
            at_server += 1
            turn.notify_all()
            if not turn.wait_for(lambda: at_server >= min(bound, len(unfinished)), timeout=20):
                starved.append(seen)
            at_server -= 1
            if seen.prefix == 15:  # the candidate's last probe
                unfinished.discard(seen.problem)
            turn.notify_all()

    server = loopback(dict.fromkeys(names, 16), hold)
    targets = [make_target(steps=16, answer=WRONG, problem_id=name) for name in names]
    with http(server.base_url, concurrency=bound) as backend:
        out = label_solutions(backend, targets, CompleterConfig(N=2))
    assert starved == []
    assert server.max_in_flight == bound
    assert len(server.seen) == out.tally.requests == 4 * len(names)
    assert [item.first_bad_step for item in out.solutions] == [16] * len(names)


# --- the stream's bookkeeping ---------------------------------------------------------------


class Dropping(FakeBackend):
    """Streams, but answers only every other request (or each one twice)."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__(responder=lambda r: [f"The answer is: {GOLDEN}"] * r.n)
        self.twice = twice

    def stream(
        self,
        first: Sequence[GenerationRequest],
        follow_up: FollowUp,
        incoming: object = None,
        background: bool = False,
    ) -> None:
        for i, request in enumerate(first):
            result = self._answer(request)
            if self.twice:
                follow_up(request, result)
                follow_up(request, result)
            elif i % 2:
                follow_up(request, result)


def test_a_request_left_unanswered_is_an_error() -> None:
    targets = [make_target(steps=2, answer=WRONG, problem_id=f"q{i}") for i in range(4)]
    with pytest.raises(RuntimeError, match="no result for 2 requests"):
        label_solutions(Dropping(), targets, CompleterConfig(N=1))


def test_a_request_answered_twice_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="answered already"):
        target = make_target(steps=2, answer=WRONG)
        label_solutions(Dropping(twice=True), [target], CompleterConfig(N=1))


def test_every_result_is_tallied_failed_ones_by_cause() -> None:
    def flaky(request: GenerationRequest) -> list[Any]:
        if int(request.tag.rsplit("/", 1)[1]) == 2:
            return [ConnectionError("refused")]
        return [Completion(text=f"The answer is: {WRONG}")] * request.n

    targets = [make_target(steps=4, answer=WRONG, problem_id=f"q{i}") for i in range(3)]
    cfg = CompleterConfig(N=2, strategy="per_step", witness=False)
    for backend in (FakeBackend(responder=flaky), StreamingFake(responder=flaky)):
        out = label_solutions(backend, targets, cfg)
        tally = out.tally
        assert tally.requests == len(backend.requests) == out.prefixes
        assert tally.failed == tally.causes["refused"] == 3  # prefix 2 of each candidate


def test_stream_backend_with_nothing_to_send_sends_nothing() -> None:
    backend = StreamingFake()
    stream_backend(backend, [], lambda request, result: [], RequestTally())
    assert backend.calls == []
