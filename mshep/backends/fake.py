"""Pure. A scripted backend for unit tests: a queue of replies and a history of what was asked.

Replies are taken one per completion (a request with n=4 takes four), in order; a callable
`responder` may answer instead, from the request itself. `FakeBackend` only has `generate` (so
streamed work comes to it in waves); `StreamingFake` streams, answering the requests in flight in
a seeded random order, as a server whose requests finish out of order. Nothing here is a model:
the product never uses it.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from mshep.backends.base import (
    BackendBase,
    Completion,
    FollowUp,
    GenerationRequest,
    GenerationResult,
    Incoming,
)
from mshep.records import Usage

Reply = str | Completion | Exception
Responder = Callable[[GenerationRequest], Sequence[Reply]]


def _as_completion(reply: str | Completion) -> Completion:
    if isinstance(reply, Completion):
        return reply
    return Completion(text=reply, completion_tokens=len(reply.split()))


class FakeBackend(BackendBase):
    name = "fake"

    def __init__(
        self, replies: Iterable[Reply] = (), responder: Responder | None = None, model: str = "fake"
    ) -> None:
        self.queue: deque[Reply] = deque(replies)
        self.responder = responder
        self.model = model
        self.calls: list[list[GenerationRequest]] = []

    @property
    def requests(self) -> list[GenerationRequest]:
        return [request for call in self.calls for request in call]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.calls.append(list(requests))
        return [self._answer(request) for request in requests]

    def _answer(self, request: GenerationRequest) -> GenerationResult:
        if self.responder is not None:
            replies = list(self.responder(request))
        else:
            replies = [self.queue.popleft() for _ in range(min(request.n, len(self.queue)))]
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            return GenerationResult.failed(request, str(errors[0]), model=self.model)
        completions = [
            _as_completion(reply) for reply in replies if not isinstance(reply, Exception)
        ]
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        usage = Usage(
            requests=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(c.completion_tokens or 0 for c in completions),
        )
        return GenerationResult(completions=completions, usage=usage, model=self.model)


class StreamingFake(FakeBackend):
    """A fake that streams: of the requests in flight, a seeded random one is answered next,
    and what the callback returns joins them. Each answered request is one entry of `calls`.
    With a `responder` the replies do not depend on that order; with a queue they do."""

    name = "streaming-fake"

    def __init__(
        self,
        replies: Iterable[Reply] = (),
        responder: Responder | None = None,
        model: str = "fake",
        seed: int = 0,
    ) -> None:
        super().__init__(replies, responder, model)
        self.rng = random.Random(seed)
        self.max_in_flight = 0

    def stream(
        self,
        first: Sequence[GenerationRequest],
        follow_up: FollowUp,
        incoming: Incoming | None = None,
        background: bool = False,
    ) -> None:
        in_flight = list(first)
        woken = threading.Event()
        if incoming is not None:
            incoming.wake_with(woken.set)
        while in_flight or incoming is not None:
            if incoming is not None and (woken.is_set() or not in_flight):
                woken.wait()  # with nothing in flight, wait for what arrives
                woken.clear()
                new, ended = incoming.take()
                in_flight += new
                incoming = None if ended else incoming
                continue
            self.max_in_flight = max(self.max_in_flight, len(in_flight))
            request = in_flight.pop(self.rng.randrange(len(in_flight)))
            self.calls.append([request])
            in_flight += follow_up(request, self._answer(request))
