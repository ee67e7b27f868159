"""Engine side of the vLLM backend: one `vllm.LLM` in one process, fed whole batches.

This module runs in the engine environment (vllm + ray + mshep's core, never prefect, whose
fastapi pin vllm refuses), inside a named Ray actor (`mshep.backends.vllm`). It imports vllm only
when an engine is made, so the flow's side can name the class without having vllm.

Plain data crosses the actor boundary: a batch is a list of `GenerationRequest` dicts and comes
back as `GenerationResult` dicts, so no vllm object ever reaches the flow.

Translation (docs/design.md, "vLLM engines"):
- messages through the model's chat template; a conversation that ends with an assistant message
  is continued (`continue_final_message`), not answered;
- prompts tokenised here, so a prompt longer than the engine's context fails alone, not the batch;
- `SamplingParams(n, seed, temperature, top_p, max_tokens, stop)` from the request; a JSON-schema
  `response_format` becomes `StructuredOutputsParams(json=schema)`;
- the whole batch in one `generate` call: vLLM schedules it and shares prefixes (prefix caching);
- `finish_reason == "length"` is a truncated reply; usage from the token ids themselves.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mshep.backends.base import Completion, FinishReason, GenerationRequest, GenerationResult
from mshep.errors import one_line
from mshep.records import Usage

# Engine settings that change what an engine is (its actor name is derived from them).
SETTINGS = (
    "model",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "enable_prefix_caching",
    "dtype",
    "enforce_eager",
)


# vLLM's finish reasons; an aborted or unfinished sample is no reply.
FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length"}


def structured_outputs(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """`StructuredOutputsParams` keyword arguments for an OpenAI-style `response_format`."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        return {"json": response_format["json_schema"]["schema"]}
    if kind == "json_object":
        return {"json_object": True}
    raise ValueError(f"response_format type {kind!r} is not supported by the vllm backend")


def sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """`SamplingParams` keyword arguments for one request (without structured output)."""
    kwargs: dict[str, Any] = {
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }
    if request.stop:
        kwargs["stop"] = list(request.stop)
    return kwargs


def continues(request: GenerationRequest) -> bool:
    """A conversation ending with an assistant message is a partial answer to continue."""
    return bool(request.messages) and request.messages[-1].get("role") == "assistant"


class VllmEngine:
    """One loaded engine. `generate` never raises for a request: a failed one comes back with
    its error, as every backend's results do; an engine that cannot run at all raises."""

    def __init__(self, settings: dict[str, Any], name: str = "engine") -> None:
        started = time.monotonic()
        import vllm
        from vllm.sampling_params import StructuredOutputsParams

        self.name = name
        self.settings = dict(settings)
        self._params = vllm.SamplingParams
        self._structured = StructuredOutputsParams
        engine_args = {key: settings[key] for key in SETTINGS if settings.get(key) is not None}
        if int(settings.get("tensor_parallel_size") or 1) > 1:
            engine_args["distributed_executor_backend"] = "ray"  # the actor's placement group
        try:
            self.llm = vllm.LLM(**engine_args)
        except Exception as error:  # its text (pydantic, HF) spans lines: keep all on the last
            raise RuntimeError(one_line(error)) from error
        self.tokenizer = self.llm.get_tokenizer()
        config = self.llm.llm_engine.model_config
        self.max_model_len = int(getattr(config, "max_model_len", 0) or 0)
        self.stats = {
            "loads": 1,
            "load_s": round(time.monotonic() - started, 3),
            "pid": os.getpid(),
            "batches": 0,
            "requests": 0,
            "failed_requests": 0,
            "prompt_tokens": 0,
            "cached_prompt_tokens": 0,
            "completion_tokens": 0,
            "busy_s": 0.0,
        }

    def placement_group_id(self) -> str | None:
        """The placement group the engine runs in (tensor parallel), for whoever frees it."""
        import ray

        return ray.get_runtime_context().get_placement_group_id()

    def info(self) -> dict[str, Any]:
        """What the engine is and what it has done (the flow's summary keeps this)."""
        return {"name": self.name, "model": self.settings.get("model"), **self.stats}

    def _prompt(self, request: GenerationRequest) -> list[int]:
        cont = continues(request)
        text = self.tokenizer.apply_chat_template(
            request.messages,
            tokenize=False,
            add_generation_prompt=not cont,
            continue_final_message=cont,
        )
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.max_model_len and len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt of {len(ids)} tokens does not fit the engine's context "
                f"(max_model_len {self.max_model_len})"
            )
        return ids

    def _sampling(self, request: GenerationRequest) -> Any:
        kwargs = sampling_kwargs(request)
        if (structured := structured_outputs(request.response_format)) is not None:
            kwargs["structured_outputs"] = self._structured(**structured)
        return self._params(**kwargs)

    def generate(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started = time.monotonic()
        requests = [GenerationRequest.model_validate(item) for item in batch]
        results: list[GenerationResult | None] = [None] * len(requests)
        prompts, params, where = [], [], []
        for index, request in enumerate(requests):
            try:
                prompts.append({"prompt_token_ids": self._prompt(request)})
                params.append(self._sampling(request))
                where.append(index)
            except Exception as error:  # this request cannot be run; the others can
                results[index] = self._failed(request, f"request refused: {one_line(error)}")
        if prompts:
            try:
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
            except Exception as error:  # the engine itself failed: every request of the batch
                if type(error).__name__ == "EngineDeadError":
                    os._exit(1)  # unusable for good: Ray restarts the actor, callers see it die
                for index in where:
                    results[index] = self._failed(
                        requests[index], f"engine error: {one_line(error)}"
                    )
            else:
                for index, output in zip(where, outputs, strict=True):
                    results[index] = self._result(output)
        self.stats["batches"] += 1
        self.stats["busy_s"] = round(self.stats["busy_s"] + time.monotonic() - started, 3)
        return [result.model_dump() for result in results if result is not None]

    def _failed(self, request: GenerationRequest, error: str) -> GenerationResult:
        self.stats["requests"] += 1
        self.stats["failed_requests"] += 1
        cause = f"vLLM {error.split(':', 1)[0]} ({self.name})"
        return GenerationResult.failed(request, error, model=self.name, cause=cause)

    def _result(self, output: Any) -> GenerationResult:
        completions = [
            Completion(
                text=sample.text,
                finish_reason=FINISH.get(sample.finish_reason, "error"),
                completion_tokens=len(sample.token_ids),
            )
            for sample in output.outputs
        ]
        prompt_tokens = len(output.prompt_token_ids or [])
        usage = Usage(
            requests=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(c.completion_tokens or 0 for c in completions),
        )
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += prompt_tokens
        self.stats["cached_prompt_tokens"] += int(getattr(output, "num_cached_tokens", 0) or 0)
        self.stats["completion_tokens"] += usage.completion_tokens
        return GenerationResult(
            completions=completions, usage=usage, model=str(self.settings.get("model"))
        )
