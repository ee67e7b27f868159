"""Prefect: secrets from Prefect Secret blocks, read where they are used, never passed as task
inputs (inputs reach the API, cache keys and persisted results)."""

from __future__ import annotations

from typing import Any

from mshep.config import OutputConfig, ServingConfig
from mshep.errors import MissingToken
from mshep.hub import hub_token_from_env


def hub_token(output: OutputConfig) -> str:
    """The Hub token: a named Prefect Secret block wins over the environment variable."""
    if output.hub_token_block:
        return secret_text(output.hub_token_block, "output.hub_token_block")
    return hub_token_from_env(output)


def serving_token(serving: ServingConfig) -> str | None:
    """The API token from `serving.token_block`, when one is named (else the backend reads
    `serving.token_env` itself)."""
    if serving.kind != "http" or not serving.token_block:  # engines in Ray take no API token
        return None
    return secret_text(serving.token_block, "serving.token_block")


def secret_text(name: str, setting: str) -> str:
    """The text of the Prefect Secret block `name`; errors name the block and the setting, and
    never quote the stored value."""
    from prefect.blocks.system import Secret
    from pydantic import ValidationError

    where = f"Prefect Secret block {name!r} ({setting})"
    try:
        block: Any = Secret.load(name)  # sync here; its type also admits a coroutine
        value = block.get()
    except ValidationError:  # its message could quote the stored value
        raise MissingToken(f"cannot read the {where}: it is not a Secret block") from None
    except Exception as error:  # not found, API unreachable: the user must fix either
        raise MissingToken(f"cannot load the {where}: {error}") from None
    if not isinstance(value, str) or not value.strip():
        raise MissingToken(f"the {where} holds no text token")
    return value.strip()
