"""Pure. The run config: one nested pydantic model, the flow's parameter and the Prefect UI form.

Secrets are not fields: a backend names the environment variable (or Prefect Secret block) that
holds its token, never the token itself, so no secret reaches flow parameters or cache keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from mshep.formats import FORMATS, FormatName
from mshep.prompts import PromptConfig

FileType = Literal["parquet", "jsonl"]
FILE_TYPES: tuple[FileType, ...] = ("parquet", "jsonl")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HttpBackendConfig(Section):
    """Any OpenAI-compatible server (`vllm serve`, TGI, the simulator) or Hugging Face Inference."""

    kind: Literal["http"] = "http"
    base_url: str | None = Field(
        default=None,
        description="Server URL, e.g. http://127.0.0.1:8000/v1; unset = Hugging Face Inference.",
    )
    token_env: str = Field(
        default="HF_TOKEN",
        description="Environment variable holding the API token (not the token).",
    )
    concurrency: int = Field(default=64, ge=1, le=4096, description="Requests in flight at once.")
    timeout_s: float = Field(default=300.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(default=6, ge=0, le=20, description="Retries on 429/5xx/timeouts.")
    supports_n: bool = Field(
        default=True, description="Server honours `n`; if not, n requests are sent instead."
    )


class VllmBackendConfig(Section):
    """vLLM engine in a Ray actor with its own environment (vllm cannot share prefect's)."""

    kind: Literal["vllm"] = "vllm"
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=256)
    enable_prefix_caching: bool = True


def _backend_kind(value: Any) -> str:
    """`kind` picks the backend; it may be left out for the common case, an HTTP server."""
    if isinstance(value, dict):
        return str(value.get("kind", "http"))
    return str(getattr(value, "kind", "http"))


BackendConfig = Annotated[
    Annotated[HttpBackendConfig, Tag("http")] | Annotated[VllmBackendConfig, Tag("vllm")],
    Discriminator(_backend_kind),
]


class SamplingConfig(Section):
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(
        default=2048, ge=16, le=131072, description="Per reply; the recipe's 128 truncates most."
    )
    stop: list[str] | None = None
    seed: int = Field(default=0, description="Base seed; request seeds are derived from it.")


class ModelStage(Section):
    model: str = Field(default="meta-llama/Llama-3.1-8B-Instruct", min_length=1)
    backend: BackendConfig | None = Field(
        default=None, description="Overrides the run's backend for this stage."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    structured_output: bool = Field(
        default=False, description="Ask for JSON (response_format) instead of 'Step k:' text."
    )


class GoldenConfig(ModelStage):
    source: Literal["reference", "model"] = Field(
        default="reference",
        description="'reference': the dataset's answer column; 'model': a strong model solves it.",
    )
    model: str = Field(default="meta-llama/Llama-3.1-70B-Instruct", min_length=1)
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.2))


class GeneratorConfig(ModelStage):
    M: int = Field(default=4, ge=1, le=128, description="Candidate solutions per question.")


class CompleterConfig(ModelStage):
    N: int = Field(default=4, ge=1, le=128, description="Rollouts per evaluated step prefix.")
    strategy: Literal["per_step", "first_error"] = Field(
        default="first_error",
        description="first_error: binary search for the first bad step of each candidate whose "
        "answer is wrong, ~log2(L) prefixes rolled out; per_step: N rollouts from every prefix "
        "(the paper's and the recipe's), soft values on every step.",
    )
    witness: bool = Field(
        default=True,
        description="A candidate whose own final answer is right needs no rollouts: all its steps "
        "are good (label source 'witness', no soft value). Both strategies; set false, with "
        "per_step, for soft values on every step of every candidate.",
    )
    difficulty_filter: bool = Field(
        default=False,
        description="Leave out questions whose candidates are all right or all wrong (by final "
        "answer), counted in the summary as 'filter: ...'. Needs generator.M >= 2: a question "
        "with a single candidate is always kept.",
    )


class DatasetConfig(Section):
    source: str = Field(
        default="openai/gsm8k",
        min_length=1,
        description="Hub dataset name, local .jsonl/.json/.parquet/.csv path, or s3:// URI.",
    )
    name: str | None = Field(default="main", description="Hub dataset configuration, if any.")
    split: str = "test"
    question_column: str = "question"
    answer_column: str | None = Field(
        default="answer", description="Reference solution/answer column; unset if there is none."
    )
    id_column: str | None = Field(default=None, description="Unset: the row index is the id.")
    answer_format: Literal["auto", "gsm8k", "boxed", "plain"] = "auto"
    limit: int | None = Field(default=None, ge=1, description="Use only the first rows.")


class OutputConfig(Section):
    path: str = Field(default="mshep-output", description="Local directory or s3:// prefix.")
    formats: list[FormatName] = Field(default_factory=lambda: list(FORMATS))
    file_types: list[FileType] = Field(default_factory=lambda: list(FILE_TYPES))
    push_to_hub: str | None = Field(default=None, description="Hub repo id to push to.")
    private: bool = True
    hub_token_env: str = Field(
        default="HF_TOKEN",
        description="Environment variable holding the Hub token (not the token).",
    )
    hub_token_block: str | None = Field(
        default=None, description="Name of a Prefect Secret block holding the Hub token instead."
    )


class ExecutionConfig(Section):
    shard_size: int = Field(default=200, ge=1, le=100_000, description="Questions per task.")
    task_runner: Literal["threads", "ray"] = "threads"
    workers: int = Field(default=8, ge=1, le=256, description="Threads of the threads runner.")
    ray_address: str | None = Field(default=None, description="Ray cluster; unset = local Ray.")
    cache: bool = Field(
        default=True, description="Reuse finished shards of an earlier run with the same inputs."
    )
    result_storage: str | None = Field(
        default=None,
        description="Where task results persist: a path or s3:// prefix; "
        "unset = <output.path>/.work/results. Credentials come from the environment.",
    )
    result_storage_block: str | None = Field(
        default=None,
        description="A saved Prefect filesystem block for results, e.g. 'remote-file-system/prm' "
        "(endpoint and credentials kept in the block); overrides result_storage.",
    )


class RunConfig(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    golden: GoldenConfig = Field(default_factory=GoldenConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    completer: CompleterConfig = Field(default_factory=CompleterConfig)
    backend: BackendConfig = Field(default_factory=HttpBackendConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)

    @model_validator(mode="after")
    def _golden_has_a_source(self) -> RunConfig:
        if self.golden.source == "reference" and not self.dataset.answer_column:
            raise ValueError(
                "golden.source is 'reference' but dataset.answer_column is unset: "
                "name the reference column, or set golden.source to 'model'"
            )
        return self

    @model_validator(mode="after")
    def _filter_needs_candidates(self) -> RunConfig:
        if self.completer.difficulty_filter and self.generator.M < 2:
            raise ValueError(
                "completer.difficulty_filter needs generator.M >= 2: with one candidate per "
                "question there is no all-right or all-wrong to filter"
            )
        return self

    def backend_for(self, stage: ModelStage) -> HttpBackendConfig | VllmBackendConfig:
        return stage.backend or self.backend
