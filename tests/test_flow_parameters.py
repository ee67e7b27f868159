"""The flow's parameters as Prefect sees them: one per config section, each a form whose defaults
are the defaults a run uses, and a run's parameters merged over a deployment's field by field."""

from __future__ import annotations

from typing import Any

import pytest

from flows.parameters import DEFAULTS, SECTIONS, _merge, run_config
from flows.prm import mshep_flow
from mshep.config import RunConfig
from mshep.errors import ConfigError


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    if "allOf" in node and len(node["allOf"]) == 1:
        return resolve(schema, node["allOf"][0])
    return node


def form_defaults(schema: dict[str, Any], node: dict[str, Any]) -> Any:
    """What a form built from the JSON schema shows: a field's own default, else the defaults
    of the fields of its (referenced) object type."""
    if "default" in node:
        return node["default"]
    node = resolve(schema, node)
    if "default" in node:
        return node["default"]
    return {name: form_defaults(schema, prop) for name, prop in node["properties"].items()}


def test_the_parameters_are_the_config_sections() -> None:
    schema = mshep_flow.parameters.model_dump()
    assert list(schema["properties"]) == list(SECTIONS)
    assert schema["required"] == []


@pytest.mark.parametrize("section", SECTIONS)
def test_every_default_the_form_shows_is_the_default_a_run_uses(section: str) -> None:
    schema = mshep_flow.parameters.model_dump()
    shown = form_defaults(schema, schema["properties"][section])
    assert shown == DEFAULTS.model_dump(mode="json")[section]
    # Set by the flow, never by a user: in the section's default value, not a form field.
    defaults = DEFAULTS.model_dump(mode="json", exclude={"serving": {"engine_scope"}})
    # The nested object types too, which a form renders when a section is edited.
    node = resolve(schema, schema["properties"][section])
    assert {
        name: form_defaults(schema, {k: v for k, v in prop.items() if k != "default"})
        if "$ref" in prop or "allOf" in prop
        else prop.get("default")
        for name, prop in node["properties"].items()
    } == defaults[section]


def test_golden_sampling_defaults_cooler_in_the_form_too() -> None:
    schema = mshep_flow.parameters.model_dump()
    golden = resolve(schema, schema["properties"]["golden"])
    sampling = resolve(schema, golden["properties"]["sampling"])
    assert (
        sampling["properties"]["temperature"]["default"]
        == 0.2
        == RunConfig().golden.sampling.temperature
    )


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("generator", "model"),
        ("generator", "M"),
        ("completer", "N"),
        ("completer", "strategy"),
        ("dataset", "limit"),
        ("dataset", "source"),
        ("serving", "base_url"),
        ("serving", "kind"),
        ("output", "path"),
        ("execution", "task_runner"),
    ],
)
def test_common_fields_are_plain_form_fields(section: str, field: str) -> None:
    """A scalar, a Literal choice, or an optional scalar: never an object union (a JSON box)."""
    schema = mshep_flow.parameters.model_dump()
    prop = resolve(schema, schema["properties"][section])["properties"][field]
    options = prop.get("anyOf", [prop])
    kinds = {option.get("type") for option in options}
    assert kinds <= {"string", "integer", "number", "boolean", "null"}, prop
    assert "null" not in kinds or len(kinds) == 2, prop


def test_a_run_overrides_a_deployment_field_by_field() -> None:
    deployed = {"model": "a", "N": 4, "sampling": {"temperature": 0.5, "top_p": 0.9}}
    merged = _merge(deployed, {"N": 8, "sampling": {"top_p": 1.0}})
    assert merged == {"model": "a", "N": 8, "sampling": {"temperature": 0.5, "top_p": 1.0}}
    assert _merge(deployed, {"sampling": None})["sampling"] is None  # an explicit null unsets
    assert _merge({"__prefect_kind": "json", "value": "{}"}, {"N": 1}) == {"N": 1}
    # A placeholder inside the deployment's section: the server resolved it into the run's
    # parameters only, so the run's section is taken whole rather than mixed with it.
    variable = {"__prefect_kind": "workspace_variable", "variable_name": "model"}
    assert _merge({"model": variable, "N": 4}, {"model": "m", "N": 8}) == {"model": "m", "N": 8}


def test_sections_given_directly_are_validated_together() -> None:
    config = run_config({name: getattr(RunConfig(), name) for name in SECTIONS})
    assert config == RunConfig()
    sections = {name: getattr(RunConfig(), name) for name in SECTIONS}
    sections["dataset"] = sections["dataset"].model_copy(update={"answer_column": None})
    with pytest.raises(ConfigError, match="answer_column"):
        run_config(sections)


@pytest.mark.slow
def test_the_flow_checks_first_and_fails_before_any_model_call(
    prefect_harness: None, gsm8k_test: Any, tmp_path: Any
) -> None:
    """Called with parameters only (as a deployment calls it): a misnamed column is the same
    one-line message `mshep check` gives, and the model is never asked anything."""
    from mshep.config import DatasetConfig, ServingConfig
    from mshep.errors import DatasetError
    from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim:
        with pytest.raises(DatasetError) as raised:
            mshep_flow(
                dataset=DatasetConfig(source=str(gsm8k_test), question_column="problem"),
                serving=ServingConfig(base_url=sim.base_url),
                output=DEFAULTS.output.model_copy(update={"path": str(tmp_path)}),
            )
        asked = dict(sim.stats().by_kind)
    assert str(raised.value).startswith("column 'problem' (dataset.question_column) is not in")
    assert "\n" not in str(raised.value)
    assert asked.get("generate", 0) == asked.get("complete", 0) == 0
