"""Network: the checks of an HTTP endpoint before a run. GET /models answers and accepts the
token; one one-token chat request comes back as an OpenAI chat completion (a proxy's HTML page
or a wrong path fails here, not after retries in the run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mshep.backends.base import GenerationRequest
from mshep.backends.http_replies import AUTH_STATUSES, refused
from mshep.errors import BackendUnavailable

if TYPE_CHECKING:
    from mshep.backends.base import Backend

CHECK_TIMEOUT_S = 5.0


def check_chat(probe: Backend, model: str, where: str) -> None:
    """One tiny real request through `probe` (a backend that does not retry)."""
    ask = [{"role": "user", "content": "What is 1 + 1? Answer with the number."}]
    (result,) = probe.generate([GenerationRequest(messages=ask, model=model, max_tokens=1)])
    if result.error is not None:
        raise BackendUnavailable(
            f"a one-token test request for {model!r} to {where} failed: {result.error}"
        )


def check_server(base_url: str, token: str | None, token_env: str) -> None:
    """GET {base_url}/models: BackendUnavailable if unreachable or if the token is refused."""
    import httpx  # lazily: only the preflight needs a plain synchronous client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{base_url.rstrip('/')}/models"
    try:
        response = httpx.get(url, headers=headers, timeout=CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise BackendUnavailable(f"cannot reach {base_url}: {type(exc).__name__}: {exc}") from exc
    if response.status_code in AUTH_STATUSES:
        what = refused(bool(token), token_env)
        raise BackendUnavailable(f"{base_url} {what}: HTTP {response.status_code} on GET {url}")
