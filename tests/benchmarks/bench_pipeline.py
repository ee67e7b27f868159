"""Benchmark (run by hand, not by pytest): the whole flow against the simulated model.

    python tests/benchmarks/bench_pipeline.py --questions 200 -M 4 -N 4 [--driver waves]
    python tests/benchmarks/bench_pipeline.py --questions 200 --labelling-only

The simulator runs in its own process (as a real server would) with `slots` requests decoded at
once; it reports busy slot-seconds. Efficiency = the simulator's ideal time (busy slot-seconds /
slots: the time a perfectly fed server would need) ÷ the flow's wall time. 1.0 means the client
kept every slot busy from start to end; waves that wait for the slowest request, serial stages or
client overhead push it down.

`--driver waves` hides the HTTP backend's `stream` (in this process), so the complete stage
labels round by round, each round waiting for its slowest request (the barrier before issue 15),
for an A/B on the same code. `--labelling-only` skips the flow: it generates the candidates
once, then labels them all (one shard) with each driver in turn, twice, and reports each.
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
from typing import Any

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
    parser.add_argument(
        "--concurrency",
        type=int,
        default=80,
        help="serving.concurrency: a little above the server's slots, as a user would set it",
    )
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--per-token-s", type=float, default=0.005)
    parser.add_argument("--base-latency-s", type=float, default=0.05)
    parser.add_argument("--driver", choices=["stream", "waves"], default="stream")
    parser.add_argument("--workers", type=int, default=None, help="execution.workers (threads)")
    parser.add_argument(
        "--no-handoff",
        action="store_true",
        help="start a shard's completion once its generation is done (not question by question)",
    )
    parser.add_argument("--labelling-only", action="store_true", help="label without the flow")
    parser.add_argument(
        "--timeline", action="store_true", help="print the slots in use, per second of the run"
    )
    parser.add_argument(
        "--cli",
        action="store_true",
        help="run `mshep run` as a user would (its own temporary Prefect server): process wall, "
        "flow wall, peak RSS of its process tree; beyond 1,319 questions the GSM8K test rows "
        "are repeated (each repeat a new row, so a new id)",
    )
    args = parser.parse_args()
    if args.labelling_only:
        labelling_only(args)
        return
    if args.cli:
        cli_run(args)
        return
    if args.driver == "waves":
        from mshep.backends.http import HttpBackend

        del HttpBackend.stream  # the stage then gets waves (`mshep.batches.stream_backend`)
    if args.no_handoff:
        from flows.placement import Submitter

        Submitter.hands_over = property(lambda self: False)  # type: ignore[assignment,method-assign]

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
                    "execution": {"shard_size": args.shard_size}
                    | ({"workers": args.workers} if args.workers else {}),
                }
            )
            sampler = Sampler(base_url, simulator.pid) if args.timeline else None
            phases = Phases() if args.timeline else None
            started = time.monotonic()
            summary = run_flow(config)
            wall = time.monotonic() - started
            if sampler:
                sampler.stop()
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
        "driver": args.driver,
        "handoff": not args.no_handoff,
        "workers": config.execution.workers,
    }
    print(json.dumps(report, indent=2))
    if sampler and phases:
        sampler.show(args.slots)
        phases.show(sampler, started, wall, ideal, args.slots)


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc (Linux)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += 1024 * int(status.split("VmRSS:")[1].split()[0]) if "VmRSS:" in status else 0
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return total


def cli_run(args: argparse.Namespace) -> None:
    """`mshep run` in a subprocess against the simulator: what a user waits for, and the most
    memory its process tree (the CLI, the flow, the temporary Prefect server) held at once."""
    with tempfile.TemporaryDirectory() as work:
        data = DATA
        if args.questions > 1319:
            data = Path(work) / "questions.jsonl"
            lines = DATA.read_text(encoding="utf-8").splitlines()
            with data.open("w", encoding="utf-8") as rows:
                for i in range(args.questions):
                    rows.write(lines[i % len(lines)] + "\n")
        simulator, base_url = start_simulator(args)
        out = Path(work) / "out"
        command = [
            sys.executable, "-m", "mshep.cli", "run", "--dataset", str(data),
            "--limit", str(args.questions), "--base-url", base_url, "--model", "sim",
            "-M", str(args.M), "-N", str(args.N), "--strategy", args.strategy,
            "--output", str(out), "--shard-size", str(args.shard_size),
        ]  # fmt: skip
        command += ["--set", f"serving.concurrency={args.concurrency}"]
        if args.workers:
            command += ["--set", f"execution.workers={args.workers}"]
        if args.no_witness:
            command += ["--set", "completer.witness=false"]
        env = {**os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
        try:
            started = time.monotonic()
            process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            peak = 0
            while process.poll() is None:
                peak = max(peak, tree_rss(process.pid))
                time.sleep(0.1)
            wall = time.monotonic() - started
            stdout, stderr = process.communicate()
            served = stats(base_url)
        finally:
            simulator.terminate()
            simulator.wait(timeout=10)
        if process.returncode != 0:
            raise SystemExit(f"mshep run failed ({process.returncode}): {stderr[-2000:]}")
        summary = json.loads(stdout)
        ideal = served["busy_slot_seconds"] / served["slots"]
        flow_wall = summary["wall_time_s"]
        report = {
            "questions": args.questions,
            "M": args.M,
            "N": args.N,
            "shard_size": args.shard_size,
            "requests": served["requests"],
            "completion_tokens": served["completion_tokens"],
            "rows_in": summary["rows_in"],
            "rows_labelled": summary["rows_labelled"],
            "rows_out": summary["rows_out"],
            "process_wall_s": round(wall, 2),
            "flow_wall_s": flow_wall,
            "ideal_s": round(ideal, 2),
            "efficiency_flow": round(ideal / flow_wall, 3),
            "efficiency_process": round(ideal / wall, 3),
            "process_over_flow": round(wall / flow_wall, 3),
            "peak_rss_mib": round(peak / 2**20, 1),
        }
        print(json.dumps(report, indent=2))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(c) for c in (task / "children").read_text().split())
    return found


class Sampler:
    """Polls the simulator's slots in use every 50 ms from a thread, and the CPU each process
    used: where the run leaves the model idle (start-up, gaps, the tail) and who had the CPU."""

    def __init__(self, base_url: str, simulator: int) -> None:
        import threading

        self.base_url = base_url
        self.samples: list[tuple[float, float]] = []
        self.cpu: list[tuple[float, dict[str, float]]] = []
        self.processes = {"flow": os.getpid(), "simulator": simulator}
        for child in children(os.getpid()):
            if child != simulator:
                self.processes[f"prefect server ({child})"] = child
        self.started = time.monotonic()
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.halt.wait(0.05):
            in_flight = stats(self.base_url)["in_flight"]
            now = time.monotonic() - self.started
            self.samples.append((now, in_flight))
            if not self.cpu or now - self.cpu[-1][0] >= 1.0:
                self.cpu.append((now, {k: cpu_seconds(p) for k, p in self.processes.items()}))

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()

    def show(self, slots: int) -> None:
        """One line per second: the mean share of slots in use, as a bar, then the CPU share
        of each process in that second."""
        began = time.time() - (time.monotonic() - self.started)
        print("slots in use, per second from", time.strftime("%H:%M:%S", time.localtime(began)))
        print("   s  slots  cpu: " + ", ".join(self.processes))
        for second in range(int(self.samples[-1][0]) + 1 if self.samples else 0):
            window = [n for t, n in self.samples if second <= t < second + 1]
            share = sum(window) / len(window) / slots if window else 0.0
            used = ""
            if second + 1 < len(self.cpu):
                (t0, a), (t1, b) = self.cpu[second], self.cpu[second + 1]
                used = " ".join(f"{(b[k] - a[k]) / (t1 - t0):4.2f}" for k in a)
            print(f"{second:4d}s {share:5.2f} {'#' * round(share * 20):20s} {used}")
        if len(self.cpu) >= 2:
            first, last = self.cpu[0][1], self.cpu[-1][1]
            total = {k: round(last[k] - first[k], 1) for k in first}
            print("cpu seconds over the run:", json.dumps(total))


class Phases:
    """Where the flow's wall time goes, from the times of the flow's own log records (the
    flow run beginning, each task run finishing) and the sampler's slots: the profile table of
    tests/benchmarks/README.md."""

    TASKS = ("preflight", "load questions", "complete shard", "write outputs")

    def __init__(self) -> None:
        import logging

        self.seen: dict[str, list[float]] = {name: [] for name in ("flow", *self.TASKS)}
        seen, tasks = self.seen, self.TASKS

        class Catch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                message = record.getMessage()
                if message.startswith("Beginning flow run"):
                    seen["flow"].append(time.monotonic())
                elif message.startswith("Finished in state"):
                    name = str(getattr(record, "task_run_name", ""))
                    for task in tasks:
                        if name.startswith(task):
                            seen[task].append(time.monotonic())

        logging.getLogger("prefect").addHandler(Catch(level=logging.INFO))

    def show(self, sampler: Sampler, started: float, wall: float, ideal: float, slots: int) -> None:
        base = sampler.started

        def last(name: str) -> float | None:
            return self.seen[name][-1] - base if self.seen[name] else None

        busy = [t for t, n in sampler.samples if n > 0]
        first_request, last_request = (busy[0], busy[-1]) if busy else (None, None)
        flow = self.seen["flow"][0] - base if self.seen["flow"] else None
        rows = [
            ("Prefect starts the flow run", 0.0, flow),
            ("checks (preflight task)", flow, last("preflight")),
            ("load task", last("preflight"), last("load questions")),
            ("stage tasks start, first request", last("load questions"), first_request),
            ("the model works (first to last request)", first_request, last_request),
            ("after the last answer: last shard ends", last_request, last("complete shard")),
            ("write outputs task", last("complete shard"), last("write outputs")),
            ("summary, card, report, flow run ends", last("write outputs"), started + wall - base),
        ]
        print(f"| phase | s | share of the wall {wall:.2f} s |")
        print("|---|---|---|")
        for label, a, b in rows:
            if a is not None and b is not None:
                print(f"| {label} | {b - a:.2f} | {(b - a) / wall:.1%} |")
        if first_request is not None and last_request is not None:
            window = [n for t, n in sampler.samples if first_request <= t <= last_request]
            use = sum(window) / len(window) / slots if window else 0.0
            print(f"| mean share of slots in use while the model works | {use:.2f} | |")
        print(f"| ideal (busy slot-seconds / slots) | {ideal:.2f} | {ideal / wall:.1%} |")


class Waves:
    """An HTTP backend's `generate` alone: the labelling comes to it in waves."""

    name = "waves"

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __enter__(self) -> Waves:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, requests: Any) -> Any:
        return self.inner.generate(requests)


def labelling_only(args: argparse.Namespace) -> None:
    """The candidates generated once, then labelled in one `label_solutions` call per driver
    (stream, waves, stream, waves): wall, ideal and efficiency of the labelling alone."""
    from mshep.backends import make_backend
    from mshep.completion import label_solutions
    from mshep.config import CompleterConfig, GeneratorConfig, ServingConfig
    from mshep.generation import generate_solutions
    from mshep.labelling import LabelTarget
    from mshep.records import Problem
    from mshep.references import parse_reference_answer

    problems = []
    with DATA.open(encoding="utf-8") as lines:
        for index, line in zip(range(args.questions), lines, strict=False):
            row = json.loads(line)
            answer = parse_reference_answer(row["answer"], "gsm8k")
            assert isinstance(answer, str), answer
            problems.append(
                Problem(id=str(index), question=row["question"], reference_answer=answer)
            )
    completer = CompleterConfig(
        N=args.N, model="sim", strategy=args.strategy, witness=not args.no_witness
    )
    simulator, base_url = start_simulator(args)
    try:
        with make_backend(ServingConfig(base_url=base_url, concurrency=args.concurrency)) as http:
            generator = GeneratorConfig(M=args.M, model="sim")
            generated = generate_solutions(http, problems, generator, args.M, "generate")
            targets = [
                LabelTarget(p.id, p.question, p.reference_answer or "", solution)
                for p in problems
                for solution in generated.solutions[p.id]
            ]
            for driver in ("stream", "waves", "stream", "waves"):
                before = stats(base_url)
                started = time.monotonic()
                out = label_solutions(
                    http if driver == "stream" else Waves(http), targets, completer
                )
                wall = time.monotonic() - started
                busy = stats(base_url)["busy_slot_seconds"] - before["busy_slot_seconds"]
                ideal = busy / args.slots
                figures = {
                    "driver": driver,
                    "questions": args.questions,
                    "candidates": len(targets),
                    "requests": out.tally.requests,
                    "rounds": out.rounds,
                    "wall_s": round(wall, 2),
                    "ideal_s": round(ideal, 2),
                    "efficiency": round(ideal / wall, 3),
                }
                print(json.dumps(figures))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)


if __name__ == "__main__":
    main()
