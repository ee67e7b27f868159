"""Prefect: the flow's parameters. They are the config's sections; Prefect merges a run's
parameters over its deployment's only at the top level, so `--param completer='{"N": 8}'`
would replace the deployment's whole completer section. `run_config` merges them field by
field instead: an override of one field keeps every other setting of the deployment."""

from typing import Any

from prefect.context import FlowRunContext
from pydantic import ValidationError

from mshep.config import RunConfig, explain
from mshep.errors import ConfigError

SECTIONS = tuple(RunConfig.model_fields)
DEFAULTS = RunConfig()


def _has_placeholder(value: Any) -> bool:
    """A Prefect placeholder (`{"__prefect_kind": ...}`: a workspace variable, a template)."""
    if isinstance(value, dict):
        return "__prefect_kind" in value or any(_has_placeholder(v) for v in value.values())
    return isinstance(value, list) and any(_has_placeholder(v) for v in value)


def _merge(base: Any, override: Any) -> Any:
    """`override` over `base`, field by field through nested mappings. Where the deployment's
    value holds a Prefect placeholder, which the server resolved into the run's parameters but
    not into the deployment's, the run's value is taken whole."""
    if not isinstance(base, dict) or not isinstance(override, dict) or _has_placeholder(base):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base.get(key), value) if key in base else value
    return merged


def _deployment_parameters() -> dict[str, Any] | None:
    """The parameters of the deployment this run was made from, or None for a direct call."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.deployment_id is None:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return dict(client.read_deployment(run.deployment_id).parameters or {})


def run_config(sections: dict[str, Any]) -> RunConfig:
    """The run's config from the flow's parameters. From a deployment, the run's own (raw)
    parameters are merged over the deployment's field by field; otherwise the sections given."""
    given = {name: value.model_dump(mode="json") for name, value in sections.items()}
    deployed = _deployment_parameters()
    context = FlowRunContext.get()
    if deployed is not None and context is not None and context.flow_run is not None:
        raw = context.flow_run.parameters or {}
        given = {
            name: _merge(deployed.get(name, {}), raw[name]) if name in raw else given[name]
            for name in SECTIONS
        }
    try:
        return RunConfig.model_validate(given)
    except ValidationError as error:
        raise ConfigError(explain(error)) from None
