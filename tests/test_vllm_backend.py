"""The flow side of serving.kind 'vllm' without Ray: engine names and scopes, the split of a
batch over replicas, what the engines get from the environment, load-failure messages and the
config rules about paths and GPUs."""

from __future__ import annotations

import pytest

from mshep.backends.vllm import (
    EngineSpec,
    _load_failure,
    engine_spec,
    forwarded_env,
    named,
    split,
)
from mshep.config import RunConfig, ServingConfig


def test_split_spreads_a_batch_over_every_replica_in_order() -> None:
    assert split(list(range(5)), 4) == [[0, 1], [2], [3], [4]]
    assert split(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split([0, 1], 4) == [[0], [1]]
    assert split([], 3) == []


def test_stages_with_equal_settings_share_engines_and_runs_do_not() -> None:
    serving = ServingConfig(kind="vllm", completer_replicas=2, engine_scope="run1")
    generator = engine_spec(serving.for_stage("generator"), "m")
    completer = engine_spec(serving.for_stage("completer"), "m")
    assert generator.names == [completer.names[0]]  # the completer has one more
    assert list(named([generator, completer])) == completer.names
    other_run = engine_spec(serving.model_copy(update={"engine_scope": "run2"}), "m")
    assert not set(other_run.names) & set(generator.names)
    kept = engine_spec(serving.model_copy(update={"keep_engines": True}), "m")
    assert kept.scope is None and "run1" not in kept.names[0]
    bigger = engine_spec(serving.model_copy(update={"tensor_parallel_size": 2}), "m")
    assert bigger.names[0] != generator.names[0]  # other settings, other engines


def test_the_engines_get_vllm_settings_but_no_secret_and_no_node_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "VLLM_CPU_KVCACHE_SPACE": "4",
        "HF_HOME": "/cache",
        "VLLM_API_KEY": "k",
        "VLLM_S3_CREDENTIALS": "c",
        "HF_TOKEN": "t",
        "VLLM_HOST_IP": "10.0.0.1",
        "AWS_SECRET_ACCESS_KEY": "s",
    }.items():
        monkeypatch.setenv(name, value)
    env = forwarded_env()
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4" and env["HF_HOME"] == "/cache"
    assert not {"VLLM_API_KEY", "VLLM_S3_CREDENTIALS", "HF_TOKEN", "VLLM_HOST_IP"} & set(env)
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "env" not in EngineSpec.__dataclass_fields__  # nothing of it crosses a task boundary


@pytest.mark.parametrize(
    ("why", "hint"),
    [
        ("ModuleNotFoundError: No module named 'vllm'", "serving.engine_python"),
        ("ValueError: ... less than desired CPU memory utilization", "gpu_memory_utilization"),
        ("RuntimeError: ValidationError: max_model_len (9000) > max_position_embeddings",
         "serving.max_model_len"),
        ("RuntimeError: OSError: Repo id must be in the form 'repo_name'", "the stage's model"),
        ("RuntimeError: 401 Client Error: gated repo", "HF_TOKEN"),
        ("RuntimeError: something else", "the stage's model and the serving.* engine settings"),
    ],
)  # fmt: skip
def test_load_failures_name_the_setting_to_check(why: str, hint: str) -> None:
    message = _load_failure(engine_spec(ServingConfig(kind="vllm"), "m"), why)
    assert hint in message and why in message


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"serving": {"kind": "vllm", "engine_python": "venv/bin/python"}},
         "serving.engine_python 'venv/bin/python' is not an absolute path"),
        ({"serving": {"kind": "vllm"}, "generator": {"model": "./models/m"}},
         "generator.model './models/m' is a relative path"),
        ({"serving": {"kind": "vllm"}, "execution": {"golden_gpus": 0.5}},
         "execution.golden_gpus is 0.5 but serving.kind is 'vllm'"),
    ],
)  # fmt: skip
def test_engine_paths_must_be_absolute_and_tasks_hold_no_gpu(
    fields: dict[str, object], says: str
) -> None:
    with pytest.raises(ValueError, match=says.replace(".", r"\.")):
        RunConfig.model_validate(fields)
    # the same relative model is fine for an HTTP server (it is a name there, not a path)
    RunConfig.model_validate({"generator": {"model": "./models/m"}})


def test_the_engine_scope_is_no_form_field() -> None:
    schema = ServingConfig.model_json_schema()
    assert "engine_scope" not in schema["properties"]
    assert "keep_engines" in schema["properties"]
