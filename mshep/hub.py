"""Network: the dataset pushed to the Hugging Face Hub in one commit, with a dataset card.

The token is the caller's (the flow reads it from the environment or a Prefect Secret block) and
goes only to the Hub client's Authorization header: never into the card, logs, errors or return
values. The card is rendered once by the caller (`mshep.card`). huggingface_hub and fsspec are
imported inside the functions that need them; Prefect never is.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mshep.config import OutputConfig, RunConfig
from mshep.errors import ConfigError, MissingToken, MshepError
from mshep.summary import RunSummary


def hub_token_from_env(output: OutputConfig) -> str:
    """The Hub token from the environment variable `output.hub_token_env` names. (A Prefect
    Secret block is the flow's business: `flows.secrets.hub_token`.)"""
    token = os.environ.get(output.hub_token_env, "").strip()
    if not token:
        raise MissingToken(
            f"pushing to the Hub needs a token: set the environment variable "
            f"{output.hub_token_env} (output.hub_token_env), or name a Prefect Secret block "
            "in output.hub_token_block"
        )
    return token


def push_dataset(
    config: RunConfig,
    summary: RunSummary,
    card: str,
    token: str,
    endpoint: str | None = None,
) -> str:
    """Create the dataset repo if needed and commit every written file (`summary.outputs`) and
    the card (rendered once, by the caller) at once, so the repo never shows a card that does not
    match its data. Returns the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = config.output.push_to_hub
    if not repo_id:
        raise ConfigError("output.push_to_hub is unset: name the Hub repo to push to")
    if not token:
        raise MissingToken("pushing to the Hub needs a token; none was given")
    files = summary.outputs
    if token in card:  # cannot happen from a clean config; refuse rather than publish it
        raise MshepError("the dataset card would contain the Hub token; nothing was pushed")
    api = HfApi(endpoint=endpoint, token=token)
    # ValueError: the Hub refused the card; OSError: an output file cannot be read.
    failed: tuple[type[Exception], ...] = (
        HfHubHTTPError,
        OSError,
        ValueError,
        *_transport_errors(),
    )
    try:
        url = api.create_repo(
            repo_id, repo_type="dataset", private=config.output.private, exist_ok=True
        )
        with _local_copies(files) as local:
            operations = [CommitOperationAdd(path, source) for path, source in local.items()]
            operations.append(CommitOperationAdd("README.md", card.encode()))
            api.create_commit(
                repo_id,
                operations,
                repo_type="dataset",
                commit_message=f"mshep: {', '.join(files)} ({summary.rows_in} questions)",
                commit_description="\n".join(summary.lines()),
            )
    except failed as error:
        raise MshepError(f"pushing to the Hub dataset repo {repo_id!r} failed: {error}") from None
    return str(url)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The Hub client's connection errors: httpx2's in huggingface_hub 2.x, httpx's in 1.x."""
    errors = []
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)


@contextlib.contextmanager
def _local_copies(files: dict[str, list[str]]) -> Iterator[dict[str, str]]:
    """Repo path → local file: local files as they are, remote ones (s3://) copied to a
    temporary folder first, so the Hub client streams from disk instead of holding them in memory.
    """
    import fsspec

    with tempfile.TemporaryDirectory(prefix="mshep-hub-") as tmp:
        local = {}
        for name, uris in files.items():
            for uri in uris:
                fs, _, (path,) = fsspec.get_fs_token_paths(uri)
                repo_path = f"{name}/{posixpath.basename(path)}"
                if "file" in fs.protocol:
                    local[repo_path] = path
                else:
                    local[repo_path] = str(Path(tmp, repo_path))
                    Path(local[repo_path]).parent.mkdir(parents=True, exist_ok=True)
                    fs.get(path, local[repo_path])
        yield local
