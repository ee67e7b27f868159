"""Network: the simulated model's request handling, sockets apart: request bytes in, an HTTP
status, headers and body out, after holding a "GPU" slot for the simulated decode time.

Faults are drawn first, from their own seeded rng, so a test sees the same fault sequence
whatever the replies are; the reply text comes from per-choice rngs (`choice_rng`).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

from pydantic import ValidationError

from mshep.testing.sim_config import SimulatorConfig, SimulatorStats
from mshep.testing.sim_requests import (
    MALFORMED_BODY,
    ChatRequest,
    Choice,
    Prompt,
    Reply,
    error_reply,
    finish,
    json_reply,
    parse_prompt,
    render,
)
from mshep.testing.sim_solutions import (
    Draft,
    ReferenceProblem,
    choice_rng,
    first_wrong_step,
    step_bodies,
    write_continuation,
)

# A reply a model may really give: text, but no steps to split and no answer to read.
GARBLED_TEXT = "I'm sorry, I can't continue with that request."


class SimulatorApp:
    """The state behind the HTTP server: references, rngs, slots, stats and recorded truth."""

    def __init__(self, config: SimulatorConfig, problems: dict[str, ReferenceProblem]) -> None:
        self.config = config
        self.problems = problems
        self.stopping = threading.Event()  # wakes every simulated wait when the server stops
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(config.slots)
        self._fault_rng = random.Random(config.fault_seed)
        self._stats = SimulatorStats(slots=config.slots)
        self._since = time.monotonic()
        self._truth: dict[tuple[str, tuple[str, ...]], int | None] = {}

    def chat(self, raw: bytes) -> Reply:
        """POST /v1/chat/completions. The fault is drawn before any work is done."""
        fault = self._draw_fault()
        if fault == "500":
            return error_reply(500, "simulated internal server error", "server_error")
        if fault == "429":
            retry = {"Retry-After": str(self.config.retry_after_s)}
            return error_reply(429, "simulated rate limit", "rate_limit_error", retry)
        if fault == "malformed":
            return Reply(200, MALFORMED_BODY)
        if fault == "timeout":
            self.stopping.wait(self.config.timeout_sleep_s)
        return self._answer(raw)

    def _draw_fault(self) -> str | None:
        with self._lock:
            self._stats.requests += 1
            draw, edge = self._fault_rng.random(), 0.0
            for name, rate in self.config.fault_rates().items():
                edge += rate
                if draw < edge:
                    self._stats.faults[name] += 1
                    return name
        return None

    def _answer(self, raw: bytes) -> Reply:
        try:
            request = ChatRequest.model_validate_json(raw)
        except ValidationError as error:
            return self._reject(f"invalid request: {error.errors()[0]['msg']}")
        prompt = parse_prompt(request.user_text())
        if prompt is None:
            return self._reject("the last user message is not an mshep generator/completer prompt")
        ref = self.problems.get(prompt.question)
        if ref is None:
            return self._reject(f"unknown question: {prompt.question[:80]!r}")
        generate = prompt.kind == "generate"
        prefix_wrong = None if generate else first_wrong_step(ref, prompt.prefix)
        choices = [
            self._choice(request, prompt, ref, prefix_wrong, index) for index in range(request.n)
        ]
        self._decode([choice.tokens for choice in choices])
        usage = self._count(prompt.kind, ref.question, request.prompt_tokens(), choices)
        return json_reply(200, self._body(request, choices, usage))

    def _reject(self, message: str) -> Reply:
        with self._lock:
            self._stats.by_kind["unknown"] += 1
        return error_reply(400, message, "invalid_request_error")

    def _choice(
        self,
        request: ChatRequest,
        prompt: Prompt,
        ref: ReferenceProblem,
        prefix_wrong: int | None,
        index: int,
    ) -> Choice:
        """One reply: a whole solution, or the steps after the prefix (first wrong at
        `prefix_wrong`)."""
        rng = choice_rng(request.effective_seed(), prompt.kind, ref.question, prompt.prefix, index)
        cfg = self.config
        if prompt.kind == "generate":
            draft = write_continuation(ref, 0, None, cfg.p_wrong_step, cfg.p_recover, rng)
            self._remember(ref.question, draft)
        else:
            start, p_wrong = len(prompt.prefix), cfg.p_wrong_step_rollout
            draft = write_continuation(ref, start, prefix_wrong, p_wrong, cfg.p_recover, rng)
        text = render(draft, prompt.number_from, request.structured())
        if self._garbled():
            text = GARBLED_TEXT
        return finish(text, request.stops(), request.limit())

    def _garbled(self) -> bool:
        """Drawn per reply from the fault rng, apart from the text's own draws."""
        if not self.config.p_garbled:
            return False
        with self._lock:
            if self._fault_rng.random() < self.config.p_garbled:
                self._stats.faults["garbled"] += 1
                return True
        return False

    def _remember(self, question: str, draft: Draft) -> None:
        if self.config.record_truth:
            with self._lock:
                self._truth[(question, step_bodies(draft.steps))] = draft.first_wrong

    def _decode(self, tokens: list[int]) -> None:
        """Hold one slot for the decode time: n choices decode side by side in one slot."""
        cfg = self.config
        extra = (len(tokens) - 1) * cfg.per_extra_choice_s
        latency = cfg.base_latency_s + max(tokens) * cfg.per_token_s + extra
        with self._slots:
            self._in_flight(+1, 0.0)
            try:
                self.stopping.wait(latency)
            finally:
                self._in_flight(-1, latency)

    def _in_flight(self, change: int, busy: float) -> None:
        with self._lock:
            self._stats.in_flight += change
            self._stats.max_in_flight = max(self._stats.max_in_flight, self._stats.in_flight)
            self._stats.busy_slot_seconds += busy

    def _count(
        self, kind: str, question: str, prompt_tokens: int, choices: list[Choice]
    ) -> dict[str, int]:
        completion = sum(choice.tokens for choice in choices)
        with self._lock:
            self._stats.by_kind[kind] += 1
            asked = f"{kind}: {question}"
            self._stats.by_question[asked] = self._stats.by_question.get(asked, 0) + 1
            self._stats.choices += len(choices)
            self._stats.prompt_tokens += prompt_tokens
            self._stats.completion_tokens += completion
        total = prompt_tokens + completion
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": total,
        }

    def _body(
        self, request: ChatRequest, choices: list[Choice], usage: dict[str, int]
    ) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model or self.config.model_name,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text},
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": usage,
        }

    def models(self) -> Reply:
        """GET /v1/models."""
        model = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "mshep"}
        return json_reply(200, {"object": "list", "data": [model]})

    def stats(self) -> SimulatorStats:
        with self._lock:
            stats = self._stats.model_copy(deep=True)
        stats.elapsed_s = time.monotonic() - self._since
        stats.ideal_time_s = stats.busy_slot_seconds / stats.slots
        return stats

    def reset_stats(self) -> None:
        with self._lock:
            in_flight = self._stats.in_flight  # requests still decoding will count down
            self._stats = SimulatorStats(slots=self.config.slots, in_flight=in_flight)
            self._since = time.monotonic()

    def reference(self, question: str) -> ReferenceProblem:
        """The reference of a question (stripped); KeyError when the dataset lacks it."""
        return self.problems[question.strip()]

    def first_wrong_step(self, question: str, steps: list[str]) -> int | None:
        return first_wrong_step(self.reference(question), steps)

    def recorded_truth(self, question: str, steps: list[str]) -> int | None:
        """What the simulator recorded when it wrote this solution; KeyError if it never did."""
        with self._lock:
            return self._truth[(question.strip(), step_bodies(steps))]

    def truth(self, raw: bytes) -> Reply:
        """POST /truth {"question", "steps"} → {"first_wrong_step": k or null}."""
        try:
            query = json.loads(raw)
            return json_reply(
                200, {"first_wrong_step": self.first_wrong_step(query["question"], query["steps"])}
            )
        except (ValueError, KeyError, TypeError) as error:
            return error_reply(
                400,
                f"expected {{'question', 'steps'}} of a known question: {error!r}",
                "invalid_request_error",
            )
