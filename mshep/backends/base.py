"""Pure. The one backend protocol: a batch of requests in, one result per request out.

A backend is a context manager that loads what it needs on enter (a client, an engine) and frees it
on exit. `generate` takes the whole batch of a shard (or of a labelling round) at once so that the
server or engine sees it all; it never raises for a failed request: that request's result carries
the error and its completions come back with `finish_reason="error"`, so callers can count it.

A backend may also stream (`Streaming`): every request in flight at once under its own bound,
each result handed to a callback as it arrives, and the requests the callback returns sent at
once, so work that depends on an answer (a candidate's next probe) never waits for the rest of
a batch. A stream may also take requests that arrive from outside it (`Incoming`: a question's
candidates, handed over by the task that generates them, start its labelling). Requests of work
that others wait on least (generation) are sent as `background`: a backend with one bound shared
by several streams serves the others' first. `mshep.batches.stream_backend` drives either kind:
a backend that only has `generate` gets waves (each the follow-ups of the wave before).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from mshep.records import Usage

FinishReason = Literal["stop", "length", "error"]


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[dict[str, str]]
    n: int = Field(default=1, ge=1)
    max_tokens: int = Field(default=2048, ge=1)
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = None
    response_format: dict[str, Any] | None = None
    model: str = Field(min_length=1, description="The model asked; the backend does not know it.")
    tag: str = Field(default="", description="The caller's id for the request (logs, tests).")


class Completion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    finish_reason: FinishReason = "stop"
    completion_tokens: int | None = Field(
        default=None, description="Tokens of this completion alone, when the backend knows."
    )


class GenerationResult(BaseModel):
    """The n completions of one request; on failure, n completions with finish_reason 'error'."""

    model_config = ConfigDict(extra="forbid")
    completions: list[Completion]
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    error: str | None = None
    cause: str | None = Field(
        default=None,
        description="What failed, short enough to count by (e.g. 'connection error to "
        "http://host/v1'); set with `error`. The infrastructure, not the model's text.",
    )

    @classmethod
    def failed(
        cls, request: GenerationRequest, error: str, model: str = "", cause: str | None = None
    ) -> GenerationResult:
        completions = [Completion(finish_reason="error") for _ in range(request.n)]
        return cls(
            completions=completions,
            error=error,
            cause=cause or error,
            model=model,
            usage=Usage(requests=1),
        )


@runtime_checkable
class Backend(Protocol):
    name: str

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


FollowUp = Callable[[GenerationRequest, GenerationResult], Sequence[GenerationRequest]]
"""Called with each request and its result, as results arrive; returns the requests to send next."""


class Incoming(Protocol):
    """Requests that reach a stream from outside it, not as follow-ups of its own results."""

    def wake_with(self, wake: Callable[[], None]) -> None:
        """Call `wake()`, from any thread, whenever `take` has something new or no more will
        come (once at least, if that is already so)."""
        ...

    def take(self) -> tuple[list[GenerationRequest], bool]:
        """The requests that arrived since the last call, and whether no more will come.
        Called from the stream's one thread, as `follow_up` is."""
        ...


@runtime_checkable
class Streaming(Protocol):
    """A backend that can keep requests in flight while their follow-ups are decided."""

    def stream(
        self,
        first: Sequence[GenerationRequest],
        follow_up: FollowUp,
        incoming: Incoming | None = None,
        background: bool = False,
    ) -> None:
        """Send `first` at once; call `follow_up` exactly once per request sent, with its
        result, from one thread (never two calls at a time), and send what it returns; send
        what `incoming` has whenever it wakes the stream. Returns when every request sent has
        been answered and `incoming` (if any) has ended. Like `generate`, a failed request is a
        failed result, never an exception; an exception from `follow_up` stops the stream
        (requests still in flight are abandoned) and propagates."""
        ...


class BackendBase:
    """Context-manager plumbing for backends that hold nothing."""

    name = "backend"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
