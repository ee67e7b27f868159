"""Prefect: one bound on the requests sent to a model endpoint, across every task and every run.

Eight threads, a Ray cluster or three concurrent runs each bound only their own requests; a
server sized for 64 would see several times that. With `serving.endpoint_limit` set, the flow
keeps a Prefect global concurrency limit named after the endpoint (`mshep-endpoint-<host>`) at
that size, and each stage task holds `min(serving.concurrency, limit)` of its slots while it
talks to the endpoint: the sum in flight never exceeds the limit. Slots are leases that Prefect
renews while a task runs, so a killed run's slots come back on their own.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from mshep.config import ServingConfig


def limit_name(serving: ServingConfig) -> str:
    """`mshep-endpoint-127-0-0-1-8000-v1`; Hugging Face Inference is `mshep-endpoint-hf`."""
    if not serving.base_url:
        return "mshep-endpoint-hf"
    parts = urlsplit(serving.base_url)
    where = f"{parts.hostname or ''}-{parts.port or ''}-{parts.path}"  # never user:password
    return "mshep-endpoint-" + re.sub(r"[^a-z0-9]+", "-", where.lower()).strip("-")


def ensure_limits(servings: list[ServingConfig]) -> None:
    """Create (or resize) the global concurrency limit of each endpoint that sets one."""
    from prefect.client.orchestration import get_client

    wanted = {limit_name(s): s.endpoint_limit for s in servings if _bounded(s)}
    if not wanted:
        return
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name, limit in wanted.items():
            try:
                client.upsert_global_concurrency_limit_by_name(name, int(limit or 1))
            except ObjectAlreadyExists:  # another run created it just now: now it is there
                client.upsert_global_concurrency_limit_by_name(name, int(limit or 1))


def _bounded(serving: ServingConfig) -> bool:
    """HTTP endpoints only: a vLLM engine takes a task's whole batch and schedules it itself."""
    return serving.kind == "http" and bool(serving.endpoint_limit)


@contextlib.contextmanager
def endpoint_slots(serving: ServingConfig) -> Iterator[ServingConfig]:
    """Hold this task's share of the endpoint's limit; yields the serving config to use (its
    concurrency cut to the slots held)."""
    if not _bounded(serving) or serving.endpoint_limit is None:
        yield serving
        return
    from prefect.concurrency.sync import concurrency

    occupy = min(serving.concurrency, serving.endpoint_limit)
    with concurrency(
        limit_name(serving), occupy=occupy, strict=True, raise_on_lease_renewal_failure=False
    ):
        yield serving.model_copy(update={"concurrency": occupy})
