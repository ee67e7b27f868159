"""Pure. Requests that failed for infrastructure reasons (connection, timeouts, 5xx after their
retries, malformed replies), counted per shard by cause, and the rule that decides whether the
shard still counts as done.

A shard whose failed share is above `serving.max_failed_share` is not finished: its task fails
with the causes and counts, nothing of it is written or cached, and the next run of the same
command redoes exactly that shard. Below the share, failed requests become failed candidates or
rollouts (a step with no valid rollout is unknown) and are counted in the summary. Rows lost to
their own data (an empty question, a reply that cannot be read) are never infrastructure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mshep.backends.base import GenerationResult
from mshep.errors import MshepError


class ShardFailed(MshepError):
    """A shard's requests failed beyond the allowed share; the message says why and how often."""


class RunIncomplete(MshepError):
    """Some shards failed: nothing is written; the finished shards are kept for the next run."""


@dataclass
class RequestTally:
    """What a shard asked and what failed, by cause, with the first error text of each cause."""

    requests: int = 0
    failed: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    first_error: dict[str, str] = field(default_factory=dict)

    def add(self, result: GenerationResult) -> None:
        self.requests += 1
        if result.error is None:
            return
        cause = result.cause or result.error
        self.failed += 1
        self.causes[cause] += 1
        self.first_error.setdefault(cause, result.error)

    def describe(self) -> str:
        """'connection error to http://…/v1 (ConnectError): 412 of 412 requests; …'"""
        return "; ".join(
            f"{cause}: {count} of {self.requests} requests"
            for cause, count in self.causes.most_common()
        )


def failed_share(tally: RequestTally, max_share: float, what: str) -> ShardFailed | None:
    """`ShardFailed` when more than `max_share` of the shard's requests failed, else None."""
    if not tally.failed or tally.failed <= max_share * tally.requests:
        return None
    cause = tally.causes.most_common(1)[0][0]
    return ShardFailed(
        f"{what}: {tally.describe()} (serving.max_failed_share={max_share}); "
        f"first error: {tally.first_error[cause]}"
    )
