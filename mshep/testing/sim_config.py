"""Pure. The simulated model's knobs (`SimulatorConfig`) and its counters (`SimulatorStats`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

FAULTS = ("500", "429", "timeout", "malformed", "garbled")
KINDS = ("generate", "complete", "unknown")


class SimulatorConfig(BaseModel):
    """How the simulated model answers, how fast, and how often it fails."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port.")
    model_name: str = Field(default="mshep-simulated", description="Name listed by /v1/models.")
    p_wrong_step: float = Field(
        default=0.15, ge=0.0, le=1.0, description="Chance that a generated step is corrupted."
    )
    p_wrong_step_rollout: float = Field(
        default=0.05, ge=0.0, le=1.0, description="The same for steps continuing a right prefix."
    )
    p_recover: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Chance a wrong prefix still reaches the answer."
    )
    slots: int = Field(default=64, ge=1, description="Requests decoded at once (GPU batch).")
    base_latency_s: float = Field(default=0.02, ge=0.0, description="Seconds per request.")
    per_token_s: float = Field(default=0.0005, ge=0.0, description="Seconds per output token.")
    per_extra_choice_s: float = Field(
        default=0.001, ge=0.0, description="Seconds per choice beyond the first (n > 1)."
    )
    p_500: float = Field(default=0.0, ge=0.0, le=1.0, description="Chance of an HTTP 500.")
    p_429: float = Field(default=0.0, ge=0.0, le=1.0, description="Chance of an HTTP 429.")
    p_timeout: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Chance of stalling timeout_sleep_s first."
    )
    p_malformed: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Chance of an HTTP 200 with a truncated body."
    )
    p_garbled: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Chance of a reply (one choice) whose text has no readable answer.",
    )
    timeout_sleep_s: float = Field(default=30.0, ge=0.0, description="Stall of a timeout fault.")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After header of a 429.")
    fault_seed: int = Field(default=0, description="Seeds the fault draws, apart from the text.")
    record_truth: bool = Field(
        default=True, description="Keep the first wrong step of every generated solution."
    )

    @model_validator(mode="after")
    def _faults_fit(self) -> SimulatorConfig:
        # One draw picks at most one fault per request, so the rates share the unit interval.
        if self.p_500 + self.p_429 + self.p_timeout + self.p_malformed > 1.0 + 1e-9:
            raise ValueError("p_500 + p_429 + p_timeout + p_malformed must not exceed 1")
        return self

    def fault_rates(self) -> dict[str, float]:
        return {
            "500": self.p_500,
            "429": self.p_429,
            "timeout": self.p_timeout,
            "malformed": self.p_malformed,
        }


class SimulatorStats(BaseModel):
    """What the simulated model has served since it started or since `reset_stats()`."""

    model_config = ConfigDict(extra="forbid")
    requests: int = Field(default=0, description="Chat requests received, faults included.")
    by_kind: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    by_question: dict[str, int] = Field(
        default_factory=dict, description="Answered requests per '<kind>: <question>'."
    )
    choices: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    faults: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(FAULTS, 0))
    busy_slot_seconds: float = Field(default=0.0, description="Sum of the requests' latencies.")
    slots: int = 1
    ideal_time_s: float = Field(
        default=0.0, description="busy_slot_seconds / slots: the wall time with every slot busy."
    )
    in_flight: int = 0
    max_in_flight: int = 0
    elapsed_s: float = Field(default=0.0, description="Wall time since start or reset.")
