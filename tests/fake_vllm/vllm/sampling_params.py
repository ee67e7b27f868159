"""The fake vllm's sampling parameters (tests only; see the package's docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class StructuredOutputsParams:
    json: dict[str, Any] | None = None
    json_object: bool | None = None

    def response_format(self) -> dict[str, Any]:
        if self.json is not None:
            return {"type": "json_schema", "json_schema": {"name": "x", "schema": self.json}}
        return {"type": "json_object"}


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop: list[str] | None = None
    structured_outputs: StructuredOutputsParams | None = None
