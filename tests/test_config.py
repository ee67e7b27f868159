import pytest
from pydantic import ValidationError

from mshep.config import RunConfig, ServingConfig


def test_defaults_are_the_recipe_run_with_sane_limits():
    config = RunConfig()
    assert config.dataset.source == "openai/gsm8k"
    assert (config.generator.M, config.completer.N) == (4, 4)
    assert config.golden.source == "reference"
    assert isinstance(config.serving, ServingConfig) and config.serving.kind == "http"


def test_round_trips_through_json_as_a_flow_parameter_does():
    config = RunConfig.model_validate(
        {"serving": {"kind": "vllm", "tensor_parallel_size": 8}, "completer": {"N": 8}}
    )
    again = RunConfig.model_validate_json(config.model_dump_json())
    assert again == config and again.serving.kind == "vllm"


def test_stage_backend_overrides_the_run_backend():
    config = RunConfig.model_validate(
        {"golden": {"source": "model"}, "serving": {"golden_base_url": "http://strong:8000/v1"}}
    )
    golden, generator = config.serving.for_stage("golden"), config.serving.for_stage("generator")
    assert isinstance(golden, ServingConfig) and isinstance(generator, ServingConfig)
    assert golden.base_url == "http://strong:8000/v1"
    assert generator.base_url is None


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"generator": {"M": 0}}, "generator.M"),
        ({"completer": {"N": 1000}}, "completer.N"),
        ({"completer": {"strategy": "magic"}}, "completer.strategy"),
        ({"generator": {"sampling": {"max_tokens": 4}}}, "generator.sampling.max_tokens"),
        ({"serving": {"kind": "grpc"}}, "serving.kind"),
        ({"dataset": {"colum": "q"}}, "dataset.colum"),
    ],
)
def test_bad_values_name_their_field(data, where):
    with pytest.raises(ValidationError) as error:
        RunConfig.model_validate(data)
    locations = [".".join(str(p) for p in e["loc"]) for e in error.value.errors()]
    assert any(loc.startswith(where) for loc in locations), locations


def test_reference_golden_needs_an_answer_column():
    with pytest.raises(ValidationError, match="answer_column"):
        RunConfig.model_validate({"dataset": {"answer_column": None}})
    RunConfig.model_validate({"dataset": {"answer_column": None}, "golden": {"source": "model"}})


def test_secrets_are_not_fields():
    schema = RunConfig.model_json_schema()
    text = str(schema).lower()
    assert "token_env" in text
    for secret in ("api_key", 'hf_token"', "secret_key", "password"):
        assert secret not in text
