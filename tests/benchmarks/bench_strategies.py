"""Benchmark (run by hand, not by pytest): labelling strategies side by side on the same candidates.

    python tests/benchmarks/bench_strategies.py --questions 200 -M 4 -N 4

The simulated model runs in its own process (as a real server would). Candidates are generated
once; then the same candidates are labelled by each variant (default: `first_error` with the
witness rule, and `per_step` without it, the recipe's estimation). Rollout seeds derive from
(question, solution, prefix), so a prefix both variants roll out gets the same rollouts: the
comparison is paired. Golden answers are the GSM8K reference answers.

Accuracy is measured against the simulator's truth (`first_wrong_step`, exact for any solution):
a step is truly good iff it comes before the first wrong step; an unknown label counts as wrong
(as in tests/test_flow_e2e.py). First-bad-step accuracy is per solution: the predicted first bad
step equals the true first wrong step (None == None).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench_pipeline import DATA, start_simulator, stats

from mshep.backends import make_backend
from mshep.backends.base import Backend
from mshep.completion import label_solutions
from mshep.config import CompleterConfig, GeneratorConfig, ServingConfig
from mshep.generation import generate_solutions
from mshep.labelling import LabelTarget
from mshep.records import LabelledSolution, Problem
from mshep.references import parse_reference_answer
from mshep.summary import StageSummary, quality_report
from mshep.testing import ReferenceProblem, first_wrong_step, load_reference

VARIANTS: dict[str, dict[str, Any]] = {
    "first_error+witness": {"strategy": "first_error", "witness": True},
    "per_step": {"strategy": "per_step", "witness": False},
    "per_step+witness": {"strategy": "per_step", "witness": True},
    "first_error": {"strategy": "first_error", "witness": False},
}


def load_problems(path: Path, limit: int) -> list[Problem]:
    problems: list[Problem] = []
    with path.open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if len(problems) == limit:
                break
            row = json.loads(line)
            answer = parse_reference_answer(row["answer"], "gsm8k")
            assert isinstance(answer, str), answer
            problems.append(
                Problem(id=str(index), question=row["question"], reference_answer=answer)
            )
    return problems


def candidates(backend: Backend, problems: list[Problem], m: int) -> list[LabelTarget]:
    """M candidates per question, generated once for every variant."""
    out = generate_solutions(backend, problems, GeneratorConfig(M=m, model="sim"), m, "generate")
    return [
        LabelTarget(p.id, p.question, p.reference_answer or "", solution)
        for p in problems
        for solution in out.solutions[p.id]
    ]


def accuracy(
    refs: dict[str, ReferenceProblem], labelled: list[LabelledSolution]
) -> tuple[float, float]:
    """(step-label accuracy, first-bad-step accuracy) against the simulator's truth."""
    right_steps = steps = right_firsts = 0
    for item in labelled:
        truth = first_wrong_step(refs[item.question.strip()], item.solution.steps)
        for k, label in enumerate(item.labels, start=1):
            good = truth is None or k < truth
            right_steps += label.hard.value == ("good" if good else "bad")
            steps += 1
        right_firsts += item.first_bad_step == truth
    return right_steps / steps, right_firsts / len(labelled)


def run_variant(
    backend: Backend, base_url: str, targets: list[LabelTarget], n: int, settings: dict[str, Any]
) -> tuple[dict[str, Any], list[LabelledSolution]]:
    before = stats(base_url)
    started = time.monotonic()
    out = label_solutions(backend, targets, CompleterConfig(N=n, model="sim", **settings))
    wall = time.monotonic() - started
    served = stats(base_url)
    usage = out.usage
    stage = StageSummary(
        requests=usage.requests,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    report = quality_report(out.solutions, {"complete": stage})
    figures = {
        "completion_tokens": usage.completion_tokens,
        "server_completion_tokens": served["completion_tokens"] - before["completion_tokens"],
        "prompt_tokens": usage.prompt_tokens,
        "requests": usage.requests,
        "rollouts": report.rollouts_requested,
        "rounds": out.rounds,
        "wall_s": round(wall, 2),
        "steps_by_source": report.steps_by_source,
        "unknown_share": report.unknown_share,
        "labels_per_1k_completion_tokens": report.labels_per_1k_completion_tokens,
        "first_bad_step": dict(sorted(report.first_bad_step.items())),
        "no_bad_step": report.no_bad_step,
    }
    return figures, out.solutions


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("-M", type=int, default=4)
    parser.add_argument("-N", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--per-token-s", type=float, default=0.0005)
    parser.add_argument("--base-latency-s", type=float, default=0.02)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS)[:2], choices=list(VARIANTS))
    args = parser.parse_args()

    refs = load_reference(DATA)
    problems = load_problems(DATA, args.questions)
    simulator, base_url = start_simulator(args)
    report: dict[str, Any] = {"questions": len(problems), "M": args.M, "N": args.N}
    try:
        config = ServingConfig(base_url=base_url, concurrency=args.concurrency)
        with make_backend(config) as backend:
            targets = candidates(backend, problems, args.M)
            right = sum(
                first_wrong_step(refs[t.question.strip()], t.solution.steps) is None
                for t in targets
            )
            report.update(candidates=len(targets), candidates_all_right=right)
            for name in args.variants:
                figures, labelled = run_variant(backend, base_url, targets, args.N, VARIANTS[name])
                step_acc, first_acc = accuracy(refs, labelled)
                figures.update(
                    step_accuracy=round(step_acc, 4), first_bad_accuracy=round(first_acc, 4)
                )
                report[name] = figures
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    first, second = args.variants[:2] if len(args.variants) > 1 else (args.variants[0],) * 2
    ratio = report[first]["completion_tokens"] / max(1, report[second]["completion_tokens"])
    report[f"token_ratio {first} / {second}"] = round(ratio, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
