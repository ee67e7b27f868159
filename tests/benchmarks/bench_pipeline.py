"""Benchmark (run by hand, not by pytest): the whole flow against the simulated model.

    python tests/benchmarks/bench_pipeline.py --questions 200 -M 4 -N 4

The simulator runs in its own process (as a real server would) with `slots` requests decoded at
once; it reports busy slot-seconds. Efficiency = the simulator's ideal time (busy slot-seconds /
slots: the time a perfectly fed server would need) ÷ the flow's wall time. 1.0 means the client
kept every slot busy from start to end; waves that wait for the slowest request, serial stages or
client overhead push it down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl"


def start_simulator(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "mshep.cli",
        "simulate",
        "--data",
        str(DATA),
        "--port",
        "0",
        "--slots",
        str(args.slots),
        "--per-token-s",
        str(args.per_token_s),
        "--base-latency-s",
        str(args.base_latency_s),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    base_url = line.strip().split(" at ")[-1]
    if not base_url.startswith("http"):
        process.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return process, base_url


def stats(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats") as reply:
        return dict(json.load(reply))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("-M", type=int, default=4)
    parser.add_argument("-N", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--strategy", choices=["first_error", "per_step"], default="first_error")
    parser.add_argument("--no-witness", action="store_true", help="roll out right candidates too")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--per-token-s", type=float, default=0.005)
    parser.add_argument("--base-latency-s", type=float, default=0.05)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.prm import run_flow
    from mshep.config import RunConfig

    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    simulator, base_url = start_simulator(args)
    try:
        with prefect_test_harness(server_startup_timeout=120), tempfile.TemporaryDirectory() as out:
            config = RunConfig.model_validate(
                {
                    "dataset": {"source": str(DATA), "limit": args.questions},
                    "generator": {"M": args.M, "model": "sim"},
                    "completer": {
                        "N": args.N,
                        "model": "sim",
                        "strategy": args.strategy,
                        "witness": not args.no_witness,
                    },
                    "serving": {"base_url": base_url, "concurrency": args.concurrency},
                    "output": {"path": out},
                    "execution": {"shard_size": args.shard_size},
                }
            )
            started = time.monotonic()
            summary = run_flow(config)
            wall = time.monotonic() - started
        served = stats(base_url)
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    ideal = served["busy_slot_seconds"] / served["slots"]
    report = {
        "questions": args.questions,
        "M": args.M,
        "N": args.N,
        "shard_size": args.shard_size,
        "concurrency": args.concurrency,
        "slots": args.slots,
        "per_token_s": args.per_token_s,
        "requests": served["requests"],
        "choices": served["choices"],
        "prompt_tokens": served["prompt_tokens"],
        "completion_tokens": served["completion_tokens"],
        "rows_labelled": summary["rows_labelled"],
        "labels": summary["labels"],
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "efficiency": round(ideal / wall, 3),
        "max_in_flight": served.get("max_in_flight"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
