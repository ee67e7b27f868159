"""Network: chat completions from an OpenAI-compatible server or Hugging Face Inference Providers.

`HttpBackend.generate` sends a whole batch from one asyncio loop through
`huggingface_hub.AsyncInferenceClient`: every request is in flight together, bounded by a
semaphore of `concurrency` slots that a call holds only while it is on the wire (not while it
backs off). A request never raises: once its retries are spent it comes back as
`GenerationResult.failed`, and `stats` counts it.

Retries (tenacity): 408, 429, 5xx, timeouts, connection errors and malformed 200 replies, up to
`max_retries` times, with exponential backoff and jitter, or the server's Retry-After on
429/503. Other 4xx are the caller's to fix (a bad request, a refused token) and are not retried.

The token is read from the environment at `__enter__`; it is kept out of repr and pickles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import importlib
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

from huggingface_hub import AsyncInferenceClient, constants
from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from mshep.backends.base import BackendBase, Completion, GenerationRequest, GenerationResult
from mshep.config import HttpBackendConfig
from mshep.errors import BackendUnavailable, MissingToken
from mshep.records import Usage

BACKOFF_S = 0.5  # first retry wait; doubles per retry, plus up to as much jitter
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is treated as asking for this
CHECK_TIMEOUT_S = 5.0
_AUTH_STATUSES = frozenset({401, 403})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_T = TypeVar("_T")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP libraries huggingface_hub may use (httpx2, httpx)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


@dataclass
class HttpStats:
    """Counters for the run summary; `requests` counts HTTP calls, retries included."""

    requests: int = 0
    retries: int = 0
    failures: int = 0  # calls given up (retries spent or not retryable); n of them without n

    def add(self, other: HttpStats) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.failures += other.failures

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Reply:
    completions: list[Completion]
    usage: Usage
    model: str


class MalformedReply(ValueError):
    """A 200 whose body is not a chat completion (truncated, not JSON, no choices)."""


class _AsGiven(dict[str, Any]):
    """A response_format that huggingface_hub passes through untouched.

    For a URL, huggingface_hub rewrites an OpenAI `json_schema` format into TGI's grammar
    (`{"type": "json_object", "value": schema}`), which vLLM reads as plain JSON mode and so
    drops the schema. Its check is `response_format.get("type")`; JSON encoding reads the items
    directly, so the body still carries the format exactly as the caller gave it.
    """

    def get(self, key: str, default: Any = None) -> Any:
        return default if key == "type" else super().get(key, default)


# A malformed 200 shows up as a decoding error (JSON or UTF-8) or as a reply without choices.
_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    InferenceTimeoutError,
    TimeoutError,
    MalformedReply,
    json.JSONDecodeError,
    UnicodeDecodeError,
)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        return status is not None and (status in (408, 429) or status >= 500)
    if isinstance(exc, OfflineModeIsEnabled):
        return False  # HF_HUB_OFFLINE blocks every call: waiting will not change that
    return isinstance(exc, _RETRY_ERRORS + _TRANSPORT_ERRORS)


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds a 429/503 asks to wait (Retry-After as seconds or an HTTP date), if it says."""
    if not isinstance(exc, HfHubHTTPError) or _status(exc) not in _RETRY_AFTER_STATUSES:
        return None
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class RetryWait:
    """Tenacity wait: the server's Retry-After when it gives one, else exponential + jitter."""

    def __init__(self, backoff_s: float, max_backoff_s: float) -> None:
        self.fallback = wait_exponential_jitter(
            multiplier=backoff_s, max=max_backoff_s, jitter=backoff_s
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after_s(exc)
        return asked if asked is not None else float(self.fallback(state))


def _completion(choice: Any, tokens: int | None) -> Completion:
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    finish = "length" if getattr(choice, "finish_reason", None) == "length" else "stop"
    return Completion(
        text=text if isinstance(text, str) else None,
        finish_reason=finish,
        completion_tokens=tokens,
    )


def read_reply(output: Any, default_model: str) -> _Reply:
    """A ChatCompletionOutput → completions, usage and model; MalformedReply if it is not one."""
    choices = getattr(output, "choices", None)
    if not isinstance(choices, list):
        raise MalformedReply("the reply has no list of choices")
    usage = getattr(output, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    # Tokens are known per completion only when the call returned exactly one.
    per_choice = completion if isinstance(completion, int) and len(choices) == 1 else None
    model = getattr(output, "model", None)
    return _Reply(
        completions=[_completion(choice, per_choice) for choice in choices],
        usage=Usage(
            requests=1,
            prompt_tokens=prompt if isinstance(prompt, int) else 0,
            completion_tokens=completion if isinstance(completion, int) else 0,
        ),
        model=model if isinstance(model, str) and model else default_model,
    )


def merge_replies(
    request: GenerationRequest, outcomes: Sequence[_Reply | str], model: str
) -> GenerationResult:
    """The calls of one request (one call with n, or n calls of one) as one result; failed
    calls as error completions, or a failed result when none succeeded."""
    replies = [outcome for outcome in outcomes if isinstance(outcome, _Reply)]
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if not replies:
        return GenerationResult.failed(request, errors[0], model=model)
    completions = [c for reply in replies for c in reply.completions]
    completions += [Completion(finish_reason="error") for _ in errors]
    error = f"{len(errors)} of {len(outcomes)} calls failed: {errors[0]}" if errors else None
    usage = sum((reply.usage for reply in replies), Usage())
    return GenerationResult(
        completions=completions, usage=usage, model=replies[0].model, error=error
    )


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from sync code, even where this thread runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    # asyncio.run refuses inside a running loop (a notebook, an async caller): use a worker.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


class HttpBackend(BackendBase):
    """Chat completions over HTTP; see the module docstring for concurrency and retries."""

    name = "http"

    def __init__(
        self,
        config: HttpBackendConfig,
        model: str,
        *,
        backoff_s: float = BACKOFF_S,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.config = config
        self.model = model
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stats = HttpStats()
        self._token: str | None = None
        self._entered = False
        self._lock = threading.Lock()  # generate may be called from several threads

    def __repr__(self) -> str:
        return (
            f"HttpBackend(model={self.model!r}, base_url={self.config.base_url!r}, "
            f"token_env={self.config.token_env!r})"
        )

    def __getstate__(self) -> dict[str, Any]:
        # The token stays in this process: an unpickled copy reads it again from its own env.
        state = self.__dict__.copy()
        state.pop("_token", None)
        state.pop("_lock", None)
        state["_entered"] = False
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._token = None
        self._lock = threading.Lock()

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
        env = self.config.token_env
        token = os.environ.get(env) or None
        if token is None and self.config.base_url is None:
            raise MissingToken(
                f"Hugging Face Inference needs an API token: set the environment variable {env} "
                "(or point backend.token_env at the variable that holds it)"
            )
        return token

    def _model_for(self, request: GenerationRequest) -> str:
        return request.model or self.model

    def check(self) -> None:
        """Preflight: the token is set and, for a server, GET /models answers and accepts it."""
        token = self._read_token()
        if getattr(constants, "HF_HUB_OFFLINE", False):
            where = self.config.base_url or "Hugging Face Inference"
            raise BackendUnavailable(
                f"HF_HUB_OFFLINE is set: huggingface_hub refuses every HTTP call, including "
                f"those to {where}; unset it where the flow runs"
            )
        if self.config.base_url is not None:
            check_server(self.config.base_url, token, self.config.token_env)

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
        # Created inside the loop: the client's connection pool belongs to this loop.
        slots = asyncio.Semaphore(self.config.concurrency)
        async with self._client(token) as client:
            answers = (self._answer(client, request, slots, stats) for request in requests)
            return list(await asyncio.gather(*answers))

    def _client(self, token: str | None) -> AsyncInferenceClient:
        timeout = self.config.timeout_s
        if self.config.base_url is None:
            # No client-wide model: each call names its own, which routes it and fills the body.
            return AsyncInferenceClient(api_key=token, timeout=timeout)
        # Without a token of ours huggingface_hub would send the cached Hub token to this
        # server; a None header makes it drop the authorization header instead.
        headers: dict[str, Any] = {} if token else {"authorization": None}
        return AsyncInferenceClient(
            base_url=self.config.base_url, api_key=token, timeout=timeout, headers=headers
        )

    async def _answer(
        self,
        client: AsyncInferenceClient,
        request: GenerationRequest,
        slots: asyncio.Semaphore,
        stats: HttpStats,
    ) -> GenerationResult:
        model = self._model_for(request)
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
        slots: asyncio.Semaphore,
        stats: HttpStats,
    ) -> _Reply | str:
        """One chat completion with its retries: the reply, or why it failed."""

        def count_retry(state: RetryCallState) -> None:
            stats.retries += 1

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=RetryWait(self.backoff_s, self.max_backoff_s),
            retry=retry_if_exception(_retryable),
            before_sleep=count_retry,
            reraise=True,
        )
        try:
            return await retrying(self._attempt, client, request, n, seed, slots, stats)
        except Exception as exc:  # one failed request must not sink the batch
            stats.failures += 1
            attempts = int(retrying.statistics.get("attempt_number", 1))
            return self._reason(exc, attempts, token_sent=bool(client.token))

    async def _attempt(
        self,
        client: AsyncInferenceClient,
        request: GenerationRequest,
        n: int,
        seed: int | None,
        slots: asyncio.Semaphore,
        stats: HttpStats,
    ) -> _Reply:
        fmt = request.response_format
        if fmt and self.config.base_url is not None:
            fmt = _AsGiven(fmt)
        async with slots:
            stats.requests += 1
            output = await client.chat_completion(
                request.messages,
                model=self._model_for(request),
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=seed,
                stop=request.stop,
                n=n if n > 1 else None,  # some providers reject `n` altogether
                response_format=fmt,  # type: ignore[arg-type]  # OpenAI's dict form
            )
        # Parsed inside the retried attempt, so a malformed 200 is retried like a 5xx.
        return read_reply(output, self._model_for(request))

    def _reason(self, exc: BaseException, attempts: int, token_sent: bool) -> str:
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        status = _status(exc) if isinstance(exc, HfHubHTTPError) else None
        if status in _AUTH_STATUSES:
            return (
                f"HTTP {status}: the server {_refused(token_sent, self.config.token_env)} ({tries})"
            )
        if status is not None:
            return f"HTTP {status} {tries}: {_short(exc)}"
        if isinstance(exc, InferenceTimeoutError | TimeoutError):
            return f"timed out (timeout_s={self.config.timeout_s}) {tries}"
        if isinstance(exc, OfflineModeIsEnabled):
            return f"HF_HUB_OFFLINE is set, so huggingface_hub makes no HTTP call: {_short(exc)}"
        if isinstance(exc, MalformedReply | json.JSONDecodeError | UnicodeDecodeError):
            return f"malformed reply {tries}: {_short(exc)}"
        if isinstance(exc, _TRANSPORT_ERRORS):
            return f"connection error {tries}: {type(exc).__name__}: {_short(exc)}"
        return f"{type(exc).__name__} {tries}: {_short(exc)}"


def _refused(token_sent: bool, token_env: str) -> str:
    """What a 401/403 means here, naming the variable to fix."""
    if token_sent:
        return f"refused the token in {token_env}"
    return f"wants a token and none was sent (set {token_env})"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_server(base_url: str, token: str | None, token_env: str) -> None:
    """GET {base_url}/models: BackendUnavailable if unreachable or if the token is refused."""
    import httpx  # lazily: only the preflight needs a plain synchronous client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{base_url.rstrip('/')}/models"
    try:
        response = httpx.get(url, headers=headers, timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot reach {base_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code in _AUTH_STATUSES:
        what = _refused(bool(token), token_env)
        raise BackendUnavailable(f"{base_url} {what}: HTTP {response.status_code} on GET {url}")
