"""Pure. Backends: the protocol (`base`), a scripted fake (`fake`) and `make_backend`.

Real backends are imported only when made, so `import mshep.backends` loads no network or GPU
library (huggingface_hub, ray, vllm): the core stays importable without them. The vllm backend
talks to engines in Ray actors (`mshep.backends.vllm`); vllm itself lives in the engine
environment only (`mshep.backends.vllm_engine`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mshep.errors import MissingDependency

if TYPE_CHECKING:
    from mshep.backends.base import Backend
    from mshep.config import ServingConfig

__all__ = ["make_backend"]


def make_backend(serving: ServingConfig, token: str | None = None) -> Backend:
    """The backend a serving config names; not entered yet (use it as a context manager).
    Requests name their model: the backend is where they go, not what they ask. `token`: one
    the caller read from a secret store; otherwise the backend reads `serving.token_env`."""
    if serving.kind == "http":
        try:
            from mshep.backends.http import HttpBackend
        except ImportError as error:  # a core-only install: no huggingface_hub / tenacity
            raise MissingDependency(
                f"the http backend needs `pip install mshep[flow]` ({error.name} is missing)"
            ) from error
        return HttpBackend(serving, token=token)
    from mshep.backends.vllm import VllmBackend  # ray is imported when a batch is sent

    return VllmBackend(serving)
