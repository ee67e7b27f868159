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


def test_a_stage_can_have_its_own_server_and_token_variable():
    serving = ServingConfig(base_url="http://local:8000/v1", golden_token_env="HF_TOKEN")
    serving = serving.model_copy(update={"golden_base_url": "https://router.example/v1"})
    serving = serving.model_copy(update={"token_env": "LOCAL_TOKEN"})
    golden, completer = serving.for_stage("golden"), serving.for_stage("complete")
    assert (golden.base_url, golden.token_env) == ("https://router.example/v1", "HF_TOKEN")
    assert (completer.base_url, completer.token_env) == ("http://local:8000/v1", "LOCAL_TOKEN")
    with pytest.raises(ValueError, match="no model stage"):
        serving.for_stage("write")


def test_gpus_are_per_stage():
    config = RunConfig.model_validate({"execution": {"completer_gpus": 1, "generator_gpus": 0.5}})
    assert config.execution.gpus_for("complete") == 1.0
    assert config.execution.gpus_for("generate") == 0.5
    assert config.execution.gpus_for("golden") == 0.0
