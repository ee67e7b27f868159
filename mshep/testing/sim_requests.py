"""Pure. The simulated model's view of a chat request: which mshep prompt it is, the fields it
honours, and how a draft becomes reply text (stop strings, max_tokens, JSON mode).

It recognises mshep's own prompts (`mshep.prompts`): "## Problem … ## Solution" asks for a whole
solution, "## Problem … ## Given steps … ## Continue from Step k" for a continuation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mshep.parsing import split_steps
from mshep.prompts import render_steps
from mshep.testing.sim_solutions import (
    Draft,
    count_tokens,
    normalise,
    split_answer,
    truncate_tokens,
)

_GIVEN = re.compile(
    r"(?P<question>.*)\n## Given steps\n(?P<steps>.*?)\n?## Continue from Step (?P<next>\d+)",
    re.DOTALL,
)
_SOLVE = re.compile(r"(?P<question>.*)\n## Solution", re.DOTALL)
# A body cut mid-way, as a proxy or a dying worker leaves it: the client must not crash on it.
MALFORMED_BODY = (
    b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"index": 0, "mes'
)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers or {})


def error_reply(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> Reply:
    """An OpenAI-style error body."""
    error = {"message": message, "type": kind, "param": None, "code": status}
    return json_reply(status, {"error": error}, headers)


@dataclass(frozen=True)
class Prompt:
    kind: Literal["generate", "complete"]
    question: str
    prefix: list[str]
    number_from: int  # the number of the first step to write


def parse_prompt(text: str) -> Prompt | None:
    """The request behind a user message, from its last "## Problem" section on."""
    start = text.rfind("## Problem\n")
    if start < 0:
        return None
    rest = text[start + len("## Problem\n") :].strip()
    given = _GIVEN.fullmatch(rest)
    if given:
        prefix = split_steps(given.group("steps"))
        question = given.group("question").strip()
        return Prompt("complete", question, prefix, int(given.group("next")))
    solve = _SOLVE.fullmatch(rest)
    return Prompt("generate", solve.group("question").strip(), [], 1) if solve else None


def _text(content: Any) -> str:
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "…"}]
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


class ChatRequest(BaseModel):
    """The fields of an OpenAI chat request the simulator honours; the rest are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[dict[str, Any]] = Field(min_length=1)
    n: int = Field(default=1, ge=1, le=1024)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    response_format: dict[str, Any] | None = None

    def user_text(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        return _text(users[-1].get("content")) if users else ""

    def prompt_tokens(self) -> int:
        return sum(count_tokens(_text(m.get("content"))) for m in self.messages)

    def structured(self) -> bool:
        kind = (self.response_format or {}).get("type")
        return kind in ("json_schema", "json_object")

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def effective_seed(self) -> int | None:
        # Greedy decoding is deterministic even without a seed.
        return 0 if self.seed is None and self.temperature == 0 else self.seed


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: Literal["stop", "length"]
    tokens: int


def render(draft: Draft, number_from: int, structured: bool) -> str:
    """Reply text: "Step k: …" lines, or JSON whose steps have no prefixes and no answer tail."""
    if not structured:
        return render_steps(draft.steps, start=number_from)
    bodies = [*draft.steps[:-1], split_answer(draft.steps[-1])[0]]
    steps = [normalise(b) for b in bodies if b.strip()] or [draft.steps[-1]]
    return json.dumps({"steps": steps, "answer": draft.answer}, ensure_ascii=False)


def finish(text: str, stops: list[str], limit: int | None) -> Choice:
    """Cut at the first stop string, then at `limit` tokens (finish_reason "length")."""
    cuts = [text.find(stop) for stop in stops if stop in text]
    if cuts:
        text = text[: min(cuts)]
    tokens = count_tokens(text)
    if limit is not None and tokens > limit:
        return Choice(truncate_tokens(text, limit), "length", limit)
    return Choice(text, "stop", tokens)
