"""Network: chat completions from an OpenAI-compatible server or Hugging Face Inference Providers.

`HttpBackend.generate` sends a whole batch through `huggingface_hub.AsyncInferenceClient`: every
request is in flight together, bounded by `concurrency` slots that a call holds only while it is
on the wire (not while it backs off). A request never raises: once its retries are spent it
comes back as `GenerationResult.failed`, and `stats` counts it. `HttpBackend.stream` does the same
for requests that depend on earlier results: each result goes to the caller's callback on the
loop as it arrives, and what the callback returns joins the requests in flight.

Every call of every thread in a process runs on one event loop (`_SharedLoop`, a daemon thread):
the stage tasks running side by side share one client (one connection pool) per endpoint and
one bound of `concurrency` slots per endpoint, so generation and labelling fill the same slots
and never exceed them together; labelling (streams) gets a freed slot before generation, so the
candidates' chains of probes move on while generation fills what is left. One loop and one
pool instead of one per task also cost the client far less CPU: with a pool per task, idle
connections are probed on every request (measured: the flow process was CPU-bound at 1,319
questions).

Retries (tenacity): 408, 429, 5xx, timeouts, connection errors and malformed 200 replies, up to
`max_retries` times, with exponential backoff and jitter, or the server's Retry-After on
429/503. Other 4xx are the caller's to fix (a bad request, a refused token) and are not retried.

The token is read from the environment at `__enter__`; it is kept out of repr and pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from huggingface_hub import AsyncInferenceClient, constants
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_when_event_set,
)

from mshep.backends.base import (
    BackendBase,
    FollowUp,
    GenerationRequest,
    GenerationResult,
    Incoming,
)
from mshep.backends.http_check import check_chat, check_server
from mshep.backends.http_replies import (
    CallFailure,
    CircuitBreaker,
    HttpStats,
    Reply,
    RetryWait,
    call_failure,
    merge_replies,
    read_reply,
    retryable,
)
from mshep.config import ServingConfig
from mshep.errors import BackendUnavailable, MissingToken

BACKOFF_S = 0.5  # first retry wait; doubles per retry, plus up to as much jitter
MAX_BACKOFF_S = 30.0
_T = TypeVar("_T")


class _AsGiven(dict[str, Any]):
    """A response_format that huggingface_hub passes through untouched.

    For a URL, huggingface_hub rewrites an OpenAI `json_schema` format into TGI's grammar
    (`{"type": "json_object", "value": schema}`), which vLLM reads as plain JSON mode and so
    drops the schema. Its check is `response_format.get("type")`; JSON encoding reads the items
    directly, so the body still carries the format exactly as the caller gave it.
    """

    def get(self, key: str, default: Any = None) -> Any:
        return default if key == "type" else super().get(key, default)


class _Slots:
    """`size` slots; a waiter of lower `priority` is served first, then by arrival."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self.arrivals = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (priority, next(self.arrivals), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self.waiting:
            _, _, granted = heapq.heappop(self.waiting)
            if not granted.done():  # a cancelled waiter is skipped
                granted.set_result(None)
                return
        self.free += 1


class _Held:
    """`async with` one slot of `slots` at `priority`."""

    def __init__(self, slots: _Slots, priority: int) -> None:
        self.slots, self.priority = slots, priority

    async def __aenter__(self) -> None:
        await self.slots.acquire(self.priority)

    async def __aexit__(self, *exc: object) -> None:
        self.slots.release()


LABELLING, GENERATION = 0, 1  # slot priorities: a candidate's next probe before a new question
_CLIENTS_KEPT = 8


class _SharedLoop:
    """The process's event loop for HTTP on a daemon thread, with what lives on it: one client
    per (endpoint, token, timeout) and one `_Slots` per (endpoint, concurrency). Started on
    first use, again in a forked child (a Ray worker) or if its thread died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.clients: OrderedDict[tuple[Any, ...], AsyncInferenceClient] = OrderedDict()
        self.slots: dict[tuple[str, int], _Slots] = {}

    def _running(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if self._loop is None or self._pid != os.getpid() or not alive:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="mshep-http", daemon=True)
                thread.start()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                self.clients, self.slots = OrderedDict(), {}
            return self._loop

    def run(self, factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run a coroutine on the loop and wait for it; an interrupt cancels it."""
        loop = self._running()
        if threading.current_thread() is self._thread:
            raise RuntimeError("HttpBackend called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(factory(), loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def client(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """The client for `key`, made on first use; the least recently used beyond
        `_CLIENTS_KEPT` is closed. Called on the loop only."""
        if key in self.clients:
            self.clients.move_to_end(key)
            return self.clients[key]
        client = self.clients[key] = make()
        while len(self.clients) > _CLIENTS_KEPT:
            _, old = self.clients.popitem(last=False)
            with contextlib.suppress(Exception):
                await old.close()
        return client

    def bound(self, endpoint: str, size: int) -> _Slots:
        """The slots of `endpoint` for calls bounded at `size`. Called on the loop only."""
        return self.slots.setdefault((endpoint, size), _Slots(size))


_SHARED = _SharedLoop()


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, on the process's HTTP loop."""
    return _SHARED.run(factory)


class HttpBackend(BackendBase):
    """Chat completions over HTTP; see the module docstring for concurrency and retries."""

    name = "http"

    def __init__(
        self,
        config: ServingConfig,
        *,
        backoff_s: float = BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
        token: str | None = None,
    ) -> None:
        self.config = config
        self._given = token  # from a secret store, read by the caller; else the environment
        self.breaker = CircuitBreaker(config.circuit_breaker)
        self.where = config.base_url or "Hugging Face Inference"
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = HttpStats()
        self._token: str | None = None
        self._entered = False
        self._lock = threading.Lock()  # generate may be called from several threads

    def __repr__(self) -> str:
        return (
            f"HttpBackend(base_url={self.config.base_url!r}, token_env={self.config.token_env!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # The token stays in this process: an unpickled copy reads it again from its own env.
        state = self.__dict__.copy()
        state.pop("_token", None)
        state.pop("_given", None)
        state.pop("_lock", None)
        state.pop("breaker", None)  # a copy watches its own endpoint calls
        state["_entered"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._token = self._given = None
        self._lock = threading.Lock()
        self.breaker = CircuitBreaker(self.config.circuit_breaker)

    def __enter__(self) -> Self:
        self._token = self._read_token()
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._token = None
        self._entered = False

    def _read_token(self) -> str | None:
        if self._given:
            return self._given
        env = self.config.token_env
        token = os.environ.get(env) or None
        if token is None and self.config.base_url is None:
            raise MissingToken(
                f"Hugging Face Inference needs an API token: set the environment variable {env} "
                "(or point serving.token_env at the variable that holds it)"
            )
        return token

    def check(self, model: str | None = None) -> None:
        """Preflight: the token is set; a server answers GET /models (and accepts the token);
        then, given a model, one tiny real chat request (1 token, no retries) must come back as
        an OpenAI chat completion, so a proxy's HTML page or a wrong path fails here."""
        token = self._read_token()
        if getattr(constants, "HF_HUB_OFFLINE", False):
            where = self.config.base_url or "Hugging Face Inference"
            raise BackendUnavailable(
                f"HF_HUB_OFFLINE is set: huggingface_hub refuses every HTTP call, including "
                f"those to {where}; unset it where the flow runs"
            )
        if self.config.base_url is not None:
            check_server(self.config.base_url, token, self.config.token_env)
        if model is not None:
            probe = HttpBackend(
                self.config.model_copy(update={"max_retries": 0, "circuit_breaker": 0}),
                backoff_s=self.backoff_s,
                token=self._given,
            )
            check_chat(probe, model, self.where)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not requests:
            return []
        token = self._token if self._entered else self._read_token()
        stats = HttpStats()
        results = run_coroutine(lambda: self._generate(list(requests), token, stats))
        with self._lock:
            self.stats.add(stats)
        return results

    async def _generate(
        self, requests: list[GenerationRequest], token: str | None, stats: HttpStats
    ) -> list[GenerationResult]:
        client = await self._client(token)
        slots = _Held(_SHARED.bound(self.where, self.config.concurrency), GENERATION)
        answers = (self._answer(client, request, slots, stats) for request in requests)
        return list(await asyncio.gather(*answers))

    def stream(
        self,
        first: Sequence[GenerationRequest],
        follow_up: FollowUp,
        incoming: Incoming | None = None,
        background: bool = False,
    ) -> None:
        """`Streaming.stream`: every request in flight under `concurrency`, each result given
        to `follow_up` on this call's loop as it comes back, the requests it returns sent then,
        and those `incoming` hands over sent when it wakes the loop. A `background` stream
        waits for slots behind the others (generation behind labelling)."""
        if not first and incoming is None:
            return
        token = self._token if self._entered else self._read_token()
        stats = HttpStats()
        priority = GENERATION if background else LABELLING
        try:
            run_coroutine(
                lambda: self._stream(list(first), follow_up, incoming, priority, token, stats)
            )
        finally:
            with self._lock:
                self.stats.add(stats)

    async def _stream(
        self,
        first: list[GenerationRequest],
        follow_up: FollowUp,
        incoming: Incoming | None,
        priority: int,
        token: str | None,
        stats: HttpStats,
    ) -> None:
        client = await self._client(token)
        slots = _Held(_SHARED.bound(self.where, self.config.concurrency), priority)
        # A finished request's task, or None: `incoming` has something.
        arrived: asyncio.Queue[asyncio.Task[GenerationResult] | None] = asyncio.Queue()
        in_flight: dict[asyncio.Task[GenerationResult], GenerationRequest] = {}
        loop = asyncio.get_running_loop()

        def send(request: GenerationRequest) -> None:
            task = asyncio.create_task(self._answer(client, request, slots, stats))
            in_flight[task] = request
            task.add_done_callback(arrived.put_nowait)

        try:
            for request in first:
                send(request)
            if incoming is not None:

                def wake() -> None:
                    loop.call_soon_threadsafe(arrived.put_nowait, None)

                incoming.wake_with(wake)
            while in_flight or incoming is not None:
                task = await arrived.get()
                if task is None:  # `incoming` woke the loop (maybe again after it ended)
                    # On a thread: taking may read a file, and the loop serves every stream of
                    # the process. This stream waits, so `take` and `follow_up` never overlap.
                    new: list[GenerationRequest] = []
                    ended = True
                    if incoming is not None:
                        new, ended = await asyncio.to_thread(incoming.take)
                    incoming = None if ended else incoming
                else:  # `_answer` never raises; a bug that makes it raise ends the stream here
                    new = list(follow_up(in_flight.pop(task), task.result()))
                for request in new:
                    send(request)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _client(self, token: str | None) -> AsyncInferenceClient:
        """The process's client for this endpoint, token and timeout (on the shared loop)."""
        base_url, timeout = self.config.base_url, self.config.timeout_s

        def make() -> AsyncInferenceClient:
            if base_url is None:
                # No client-wide model: each call names its own, which routes it and fills
                # the body.
                return AsyncInferenceClient(api_key=token, timeout=timeout)
            # Without a token of ours huggingface_hub would send the cached Hub token to this
            # server; a None header makes it drop the authorization header instead.
            headers: dict[str, Any] = {} if token else {"authorization": None}
            return AsyncInferenceClient(
                base_url=base_url, api_key=token, timeout=timeout, headers=headers
            )

        # The token as a digest: the key may be seen (a debugger, a repr); the token never.
        token_id = hashlib.sha256(token.encode()).hexdigest() if token else None
        key = (base_url, token_id, timeout)
        return cast(AsyncInferenceClient, await _SHARED.client(key, make))

    async def _answer(
        self,
        client: AsyncInferenceClient,
        request: GenerationRequest,
        slots: _Held,
        stats: HttpStats,
    ) -> GenerationResult:
        model = request.model
        if self.config.supports_n or request.n == 1:
            outcome = await self._call(client, request, request.n, request.seed, slots, stats)
            return merge_replies(request, [outcome], model)
        # The server ignores `n`: n calls of one completion each, with distinct seeds.
        seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
        calls = (self._call(client, request, 1, seed, slots, stats) for seed in seeds)
        return merge_replies(request, await asyncio.gather(*calls), model)

    async def _call(
        self,
        client: AsyncInferenceClient,
        request: GenerationRequest,
        n: int,
        seed: int | None,
        slots: _Held,
        stats: HttpStats,
    ) -> Reply | CallFailure:
        """One chat completion with its retries: the reply, or why it failed. Once the breaker
        is open (the endpoint stopped answering), no new attempt is made."""

        def count_retry(state: RetryCallState) -> None:
            stats.retries += 1

        if self.breaker.is_open:
            stats.failures += 1
            return self.breaker.refusal()
        retrying = AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(self.config.max_retries + 1),
                stop_when_event_set(self.breaker.opened),
            ),
            wait=RetryWait(self.backoff_s, self.max_backoff_s),
            retry=retry_if_exception(retryable),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            reply: Reply = await retrying(self._attempt, client, request, n, seed, slots, stats)
        except Exception as exc:  # one failed request must not sink the batch
            stats.failures += 1
            attempts = int(retrying.statistics.get("attempt_number", 1))
            failure = call_failure(
                exc,
                attempts,
                self.where,
                bool(client.token),
                self.config.token_env,
                self.config.timeout_s,
            )
            self.breaker.record(failure)
            return failure
        self.breaker.record(None)
        return reply

    async def _attempt(
        self,
        client: AsyncInferenceClient,
        request: GenerationRequest,
        n: int,
        seed: int | None,
        slots: _Held,
        stats: HttpStats,
    ) -> Reply:
        fmt = request.response_format
        if fmt and self.config.base_url is not None:
            fmt = _AsGiven(fmt)
        async with slots:
            stats.requests += 1
            output = await client.chat_completion(
                request.messages,
                model=request.model,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed,
                stop=request.stop,
                n=n if n > 1 else None,  # some providers reject `n` altogether
                response_format=fmt,  # type: ignore[arg-type]  # OpenAI's dict form
            )
        # Parsed inside the retried attempt, so a malformed 200 is retried like a 5xx.
        return read_reply(output, request.model)
