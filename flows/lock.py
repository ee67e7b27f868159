"""Prefect and storage: one run at a time writes an output. Two runs on the same output would
race on its shards and write one dataset over the other; the second is refused, naming the
first. A lock left by a run that died (its process gone on this host, or its flow run no longer
running) is taken over, so a killed run never blocks the command that resumes it."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from prefect.context import FlowRunContext

from mshep.errors import OutputError
from mshep.io import exists, remove, write_text
from mshep.shards import Layout


def _owner() -> dict[str, Any]:
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return {
        "flow_run": str(run.id) if run else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the run that holds a lock may still be writing."""
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner.get("pid", 0)), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    if not owner.get("flow_run"):
        return True  # another host and no flow run to ask: assume it is still writing
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(owner["flow_run"]).state
    except Exception:  # another API, or gone: cannot tell, assume it is still writing
        return True
    return state is not None and not state.is_final()


def _read(path: str) -> dict[str, Any] | None:
    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def output_lock(layout: Layout) -> Iterator[None]:
    """Hold `<output>/.work/lock` for the run; refuse if a live run holds it."""
    path = f"{layout.work}/lock"
    other = _read(path) if exists(path) else None
    if other is not None and _alive(other):
        raise OutputError(
            f"output {layout.root!r} is being written by another run (flow run "
            f"{other.get('flow_run')}, host {other.get('host')}, pid {other.get('pid')}, since "
            f"{other.get('since')}): wait for it to end, or choose another output.path "
            f"(if no run is writing there, delete {path})"
        )
    mine = _owner()
    write_text(path, json.dumps(mine))
    if _read(path) != mine:  # another run wrote it between our check and our write
        raise OutputError(f"output {layout.root!r} was claimed by another run just now")
    try:
        yield
    finally:
        if _read(path) == mine:
            remove(path)
