"""Pure. Backends: the protocol (`base`), a scripted fake (`fake`) and `make_backend`.

Real backends are imported only when made, so `import mshep.backends` loads no network or GPU
library (huggingface_hub, vllm): the core stays importable without them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from mshep.errors import MissingDependency

if TYPE_CHECKING:
    from mshep.backends.base import Backend
    from mshep.config import HttpBackendConfig, VllmBackendConfig

__all__ = ["make_backend"]

VLLM_MISSING = (
    "the vllm backend needs `pip install mshep[vllm]` in the Ray worker environment; "
    "it is not available in this build"
)


def make_backend(config: HttpBackendConfig | VllmBackendConfig, model: str) -> Backend:
    """The backend a config names, for `model`; not entered yet (use it as a context manager)."""
    if config.kind == "http":
        from mshep.backends.http import HttpBackend

        return HttpBackend(config, model)
    if config.kind == "vllm":
        return _vllm_backend(config, model)
    raise ValueError(f"unknown backend kind {config.kind!r}")


def _vllm_backend(config: VllmBackendConfig, model: str) -> Backend:
    # The vllm module is written separately and may be absent from this build.
    if importlib.util.find_spec("mshep.backends.vllm") is None:
        raise MissingDependency(VLLM_MISSING)
    module = importlib.import_module("mshep.backends.vllm")
    backend: Backend = module.VllmBackend(config, model)
    return backend
