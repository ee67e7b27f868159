"""Network, no I/O of its own: what the HTTP backend makes of a server's answers. Which failures
are retried (408, 429, 5xx, timeouts, connection errors, malformed 200 replies) and how long to
wait (Retry-After, else exponential backoff with jitter); a chat completion read into
completions and usage; the calls of one request merged into one result; a failure as one line.
"""

from __future__ import annotations

import email.utils
import importlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, OfflineModeIsEnabled
from tenacity import RetryCallState, wait_exponential_jitter

from mshep.backends.base import Completion, GenerationRequest, GenerationResult
from mshep.records import Usage

MAX_RETRY_AFTER_S = 120.0  # a server asking for longer is treated as asking for this
AUTH_STATUSES = frozenset({401, 403})
_RETRY_AFTER_STATUSES = frozenset({429, 503})


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP libraries huggingface_hub may use (httpx2, httpx)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


TRANSPORT_ERRORS = _transport_errors()


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
class Reply:
    completions: list[Completion]
    usage: Usage
    model: str


class MalformedReply(ValueError):
    """A 200 whose body is not a chat completion (truncated, not JSON, no choices)."""


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


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, HfHubHTTPError):
        status = _status(exc)
        return status is not None and (status in (408, 429) or status >= 500)
    if isinstance(exc, OfflineModeIsEnabled):
        return False  # HF_HUB_OFFLINE blocks every call: waiting will not change that
    return isinstance(exc, _RETRY_ERRORS + TRANSPORT_ERRORS)


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


def read_reply(output: Any, default_model: str) -> Reply:
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
    return Reply(
        completions=[_completion(choice, per_choice) for choice in choices],
        usage=Usage(
            requests=1,
            prompt_tokens=prompt if isinstance(prompt, int) else 0,
            completion_tokens=completion if isinstance(completion, int) else 0,
        ),
        model=model if isinstance(model, str) and model else default_model,
    )


class CallFailure(NamedTuple):
    """Why a call failed: `cause` to count by ('HTTP 500 from http://host/v1'), `error` the
    whole story (attempts, the server's words)."""

    cause: str
    error: str


def merge_replies(
    request: GenerationRequest, outcomes: Sequence[Reply | CallFailure], model: str
) -> GenerationResult:
    """The calls of one request (one call with n, or n calls of one) as one result; failed
    calls as error completions, or a failed result when none succeeded."""
    replies = [outcome for outcome in outcomes if isinstance(outcome, Reply)]
    failures = [outcome for outcome in outcomes if isinstance(outcome, CallFailure)]
    if not replies:
        return GenerationResult.failed(request, failures[0].error, model, failures[0].cause)
    completions = [c for reply in replies for c in reply.completions]
    completions += [Completion(finish_reason="error") for _ in failures]
    usage = sum((reply.usage for reply in replies), Usage())
    if not failures:
        return GenerationResult(completions=completions, usage=usage, model=replies[0].model)
    return GenerationResult(
        completions=completions,
        usage=usage,
        model=replies[0].model,
        error=f"{len(failures)} of {len(outcomes)} calls failed: {failures[0].error}",
        cause=failures[0].cause,
    )


class CircuitBreaker:
    """Opens after `threshold` requests in a row failed once their retries were spent (with
    no success between): an endpoint that stopped answering. The requests still waiting then
    fail at once with that cause instead of each spending its own retries. 0: never opens."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.in_a_row = 0
        self.cause: str | None = None
        self.opened = threading.Event()  # retry loops stop on it (tenacity's stop_when_event_set)

    @property
    def is_open(self) -> bool:
        return self.opened.is_set()

    def record(self, failure: CallFailure | None) -> None:
        if self.is_open:
            return  # open stays open: the shard fails, the next run starts afresh
        if failure is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.cause = failure.cause
        if self.threshold and self.in_a_row >= self.threshold:
            self.opened.set()

    def refusal(self) -> CallFailure:
        cause = self.cause or "the endpoint"
        return CallFailure(
            cause, f"not sent: {self.in_a_row} requests in a row failed before it ({cause})"
        )


def call_failure(
    exc: BaseException,
    attempts: int,
    where: str,
    token_sent: bool,
    token_env: str,
    timeout_s: float,
) -> CallFailure:
    """Why a call failed once its retries were spent: the cause to count by (kind and
    endpoint) and one line naming what to fix (attempts, the server's words)."""
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
    status = _status(exc) if isinstance(exc, HfHubHTTPError) else None
    if status in AUTH_STATUSES:
        error = f"HTTP {status}: the server {refused(token_sent, token_env)} ({tries})"
        return CallFailure(f"HTTP {status} from {where}", error)
    if status is not None:
        return CallFailure(f"HTTP {status} from {where}", f"HTTP {status} {tries}: {_short(exc)}")
    if isinstance(exc, InferenceTimeoutError | TimeoutError):
        return CallFailure(f"timeouts at {where}", f"timed out (timeout_s={timeout_s}) {tries}")
    if isinstance(exc, OfflineModeIsEnabled):
        error = f"HF_HUB_OFFLINE is set, so huggingface_hub makes no HTTP call: {_short(exc)}"
        return CallFailure(f"{type(exc).__name__} at {where}", error)
    if isinstance(exc, MalformedReply | json.JSONDecodeError | UnicodeDecodeError):
        return CallFailure(
            f"malformed replies from {where}", f"malformed reply {tries}: {_short(exc)}"
        )
    name = type(exc).__name__
    if isinstance(exc, TRANSPORT_ERRORS):
        error = f"connection error {tries}: {name}: {_short(exc)}"
        return CallFailure(f"connection error to {where} ({name})", error)
    return CallFailure(f"{name} at {where}", f"{name} {tries}: {_short(exc)}")


def refused(token_sent: bool, token_env: str) -> str:
    """What a 401/403 means here, naming the variable to fix."""
    if token_sent:
        return f"refused the token in {token_env}"
    return f"wants a token and none was sent (set {token_env})"


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
