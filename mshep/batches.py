"""Pure, given a backend. What every stage does with a batch: one backend call for all its
requests (results checked one for one and tallied), or a stream of requests whose follow-ups go
out as each result comes back; request seeds derived from what a request is for, and a
request's usage shared among its replies."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

from mshep.backends.base import (
    Backend,
    Completion,
    FollowUp,
    GenerationRequest,
    GenerationResult,
    Incoming,
    Streaming,
)
from mshep.failures import RequestTally
from mshep.records import Usage

__all__ = ["call_backend", "derive_seed", "split_usage", "stream_backend"]


def derive_seed(base: int, *parts: object) -> int:
    """A request seed from (base seed, question id, stage, solution, prefix): stable across runs."""
    digest = hashlib.sha256(repr((base, *parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _spread(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer total in proportion to weights, the parts summing exactly to the total."""
    if not weights:
        return []
    weight_sum = sum(weights)
    if weight_sum <= 0:
        weights, weight_sum = [1] * len(weights), len(weights)
    shares = [total * w / weight_sum for w in weights]
    parts = [int(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: shares[i] - parts[i], reverse=True)
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


def split_usage(usage: Usage, completions: Sequence[Completion]) -> list[Usage]:
    """One request's usage shared among its n completions (the recipe gave every row the total):
    the prompt evenly, completion tokens by each completion's own count or, when the server only
    reports the total, by its length."""
    count = len(completions)
    known = [c.completion_tokens for c in completions]
    if all(k is not None for k in known) and sum(k or 0 for k in known) == usage.completion_tokens:
        completion = [k or 0 for k in known]
    else:
        completion = _spread(usage.completion_tokens, [len(c.text or "") for c in completions])
    prompt = _spread(usage.prompt_tokens, [1] * count)
    requests = _spread(usage.requests, [1] * count)
    return [
        Usage(requests=r, prompt_tokens=p, completion_tokens=c)
        for r, p, c in zip(requests, prompt, completion, strict=True)
    ]


def call_backend(
    backend: Backend, requests: list[GenerationRequest], tally: RequestTally
) -> list[GenerationResult]:
    results = backend.generate(requests) if requests else []
    if len(results) != len(requests):
        raise RuntimeError(
            f"backend {backend.name!r} returned {len(results)} results for {len(requests)} requests"
        )
    for result in results:
        tally.add(result)
    return results


def stream_backend(
    backend: Backend,
    first: list[GenerationRequest],
    follow_up: FollowUp,
    tally: RequestTally,
    incoming: Incoming | None = None,
    background: bool = False,
) -> None:
    """Send `first`, each request `follow_up` returns as soon as the result it follows is
    back, and what `incoming` hands over as it arrives: a backend that streams keeps them all
    in flight under its own bound; one that only has `generate` gets waves, each one call with
    the follow-ups of the wave before (what a round-by-round caller did), its first wave once
    `incoming` has ended. Every result is tallied as `call_backend` tallies it, and a backend
    that answers a request it was not sent, answers one twice or leaves one unanswered is an
    error, as a count mismatch is for `call_backend`."""
    if not isinstance(backend, Streaming):
        _in_waves(backend, [*first, *_all_of(incoming)], follow_up, tally)
        return
    waiting = {id(request): request for request in first}

    def answered(request: GenerationRequest, result: GenerationResult) -> list[GenerationRequest]:
        if waiting.pop(id(request), None) is None:
            raise RuntimeError(
                f"backend {backend.name!r} returned a result for a request it was not sent "
                f"or had answered already ({request.tag!r})"
            )
        tally.add(result)
        sent = list(follow_up(request, result))
        waiting.update((id(new), new) for new in sent)
        return sent

    counted = None if incoming is None else _Counted(incoming, waiting)
    backend.stream(first, answered, incoming=counted, background=background)
    if waiting:
        raise RuntimeError(
            f"backend {backend.name!r} returned no result for {len(waiting)} requests"
        )


class _Counted:
    """`incoming`, its requests added to those the stream waits for."""

    def __init__(self, incoming: Incoming, waiting: dict[int, GenerationRequest]) -> None:
        self.incoming, self.waiting = incoming, waiting

    def wake_with(self, wake: Callable[[], None]) -> None:
        self.incoming.wake_with(wake)

    def take(self) -> tuple[list[GenerationRequest], bool]:
        requests, ended = self.incoming.take()
        self.waiting.update((id(new), new) for new in requests)
        return requests, ended


def _all_of(incoming: Incoming | None) -> list[GenerationRequest]:
    """Every request `incoming` will hand over, once it has ended (waiting for that)."""
    if incoming is None:
        return []
    woken = threading.Event()
    incoming.wake_with(woken.set)
    requests: list[GenerationRequest] = []
    while True:
        woken.wait()
        woken.clear()
        new, ended = incoming.take()
        requests += new
        if ended:
            return requests


def _in_waves(
    backend: Backend, first: list[GenerationRequest], follow_up: FollowUp, tally: RequestTally
) -> None:
    wave = first
    while wave:
        results = call_backend(backend, wave, tally)
        wave = [
            new
            for request, result in zip(wave, results, strict=True)
            for new in follow_up(request, result)
        ]
