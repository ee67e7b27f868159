"""A shard's candidates handed from its generate task to its complete task question by question
(`flows.handoff`), and what it must not change: the labels, the shard files, the dataset."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.handoff import Candidates, Handoff, InputFailed
from mshep.backends.fake import StreamingFake
from mshep.completion import label_solutions
from mshep.config import CompleterConfig, RunConfig
from mshep.io import write_records
from mshep.records import KeyedSolution, Problem, Solution
from mshep.shards import ShardRef
from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

GOLDEN = "18"


def problem(i: int) -> Problem:
    return Problem(id=f"q{i}", question=f"question {i}?", reference_answer=GOLDEN)


def solution(i: int, answer: str = GOLDEN, steps: int = 3) -> Solution:
    return Solution(
        steps=[f"step {k}" for k in range(1, steps + 1)], answer=answer, model="weak", index=i
    )


def written(tmp_path: Path, by_problem: dict[str, list[Solution]]) -> ShardRef:
    path = tmp_path / "generate.jsonl"
    keyed = [
        KeyedSolution(problem_id=p, solution=s) for p, sols in by_problem.items() for s in sols
    ]
    write_records(str(path), keyed)
    return ShardRef(stage="generate", shard=0, path=str(path))


def take_all(candidates: Candidates) -> tuple[list[Any], list[Any]]:
    targets, failures, ended = candidates.take()
    assert ended
    return targets, failures


def test_questions_handed_over_are_labelled_and_the_rest_come_from_the_file(tmp_path: Path) -> None:
    problems = [problem(i) for i in range(3)]
    shard = {"q0": [solution(0), solution(1)], "q1": [], "q2": [solution(0, answer="7")]}
    handoff = Handoff()
    candidates = Candidates(handoff, problems, {p.id: GOLDEN for p in problems})
    woken = threading.Event()
    candidates.wake_with(woken.set)
    assert not woken.is_set()  # nothing yet
    handoff.put("q0", shard["q0"])
    assert woken.is_set()
    targets, failures, ended = candidates.take()
    assert [(t.problem_id, t.solution.index) for t in targets] == [("q0", 0), ("q0", 1)]
    assert failures == [] and not ended
    handoff.close(written(tmp_path, shard))  # q1 (no candidate read) and q2 were not handed over
    targets, failures = take_all(candidates)
    assert [(t.problem_id, t.solution.index) for t in targets] == [("q2", 0)]
    assert [(f.problem_id, f.reason) for f in failures] == [
        ("q1", "no candidate solution could be read")
    ]
    assert candidates.take() == ([], [], True)


def test_a_completion_waits_for_its_first_question_or_the_end() -> None:
    """(Before it takes its share of an endpoint limit.)"""
    for end in (lambda h: h.put("q0", [solution(0)]), lambda h: h.close(RuntimeError("x"))):
        handoff = Handoff()
        waiting = threading.Thread(target=handoff.wait)
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive()
        end(handoff)
        waiting.join(5)
        assert not waiting.is_alive()


def test_a_cached_generate_task_hands_over_nothing_and_every_question_comes_from_its_file(
    tmp_path: Path,
) -> None:
    problems = [problem(i) for i in range(2)]
    handoff = Handoff()
    handoff.close(written(tmp_path, {"q0": [solution(0)], "q1": [solution(0)]}))
    targets, _ = take_all(Candidates(handoff, problems, {p.id: GOLDEN for p in problems}))
    assert [t.problem_id for t in targets] == ["q0", "q1"]


def test_candidates_handed_over_that_differ_from_the_file_are_an_error(tmp_path: Path) -> None:
    problems = [problem(0)]
    handoff = Handoff()
    candidates = Candidates(handoff, problems, {"q0": GOLDEN})
    handoff.put("q0", [solution(0)])
    handoff.close(written(tmp_path, {"q0": [solution(0, answer="7")]}))
    with pytest.raises(RuntimeError, match="differ from those written"):
        candidates.take()


def test_a_failed_generate_task_stops_its_completion(tmp_path: Path) -> None:
    handoff = Handoff()
    candidates = Candidates(handoff, [problem(0)], {"q0": GOLDEN})
    handoff.close(RuntimeError("connection error to http://127.0.0.1:1/v1"))
    handoff.close(written(tmp_path, {}))  # only the first end counts
    with pytest.raises(InputFailed, match="its generate task failed: connection error"):
        candidates.take()


def test_a_new_run_gets_a_new_handoff_and_ends_one_left_behind() -> None:
    from flows.handoff import HANDOFFS

    left = HANDOFFS.open("/out/.work/generate-x/shard-0.jsonl")  # a run that never closed it
    fresh = HANDOFFS.open("/out/.work/generate-x/shard-0.jsonl")
    assert fresh is not left and HANDOFFS.get("/out/.work/generate-x/shard-0.jsonl") is fresh
    with pytest.raises(InputFailed, match="a newer run"):
        Candidates(left, [problem(0)], {"q0": GOLDEN}).take()
    assert fresh._since(0) == ([], None)
    HANDOFFS.drop("/out/.work/generate-x/shard-0.jsonl")


def scripted(request: Any) -> list[str]:
    """The completer: right from every prefix shorter than 3 steps, else wrong."""
    from tests.helpers import prefix_len_of

    right = prefix_len_of(request.messages[-1]["content"]) < 3
    return [f"The answer is: {GOLDEN if right else '7'}"] * request.n


def test_labels_are_the_same_whether_questions_arrive_or_are_given(tmp_path: Path) -> None:
    """One shard's labels, all candidates given at once vs arriving question by question while
    the stream runs (on a streaming backend, in a random order): the same."""
    problems = [problem(i) for i in range(6)]
    shard = {p.id: [solution(0, steps=5), solution(1, answer="7", steps=4)] for p in problems}
    golden = {p.id: GOLDEN for p in problems}
    cfg = CompleterConfig(N=2, model="weak")
    ref = written(tmp_path, shard)
    given, _ = take_all(Candidates(_closed(ref), problems, golden))
    at_once = label_solutions(StreamingFake(responder=scripted), given, cfg)

    handoff = Handoff()
    arriving = Candidates(handoff, problems, golden)

    def generate() -> None:
        for p in problems[:4]:
            handoff.put(p.id, shard[p.id])
        handoff.close(ref)  # the last two from the file

    feeder = threading.Timer(0.05, generate)
    feeder.start()
    streamed = label_solutions(StreamingFake(responder=scripted, seed=3), [], cfg, arriving)
    feeder.join()
    key = [(s.problem_id, s.solution.index) for s in at_once.solutions]
    by_key = {(s.problem_id, s.solution.index): s for s in streamed.solutions}
    assert sorted(by_key) == sorted(key)
    assert [by_key[k].model_dump() for k in key] == [s.model_dump() for s in at_once.solutions]
    assert streamed.usage == at_once.usage and streamed.rounds == at_once.rounds


def _closed(ref: ShardRef) -> Handoff:
    handoff = Handoff()
    handoff.close(ref)
    return handoff


# --- the flow: handed over or not, the same dataset ------------------------------------------


def run(sim: SimulatedMathModel, data: Path, output: Path, **settings: Any) -> dict[str, Any]:
    from flows.prm import run_flow

    config = RunConfig.model_validate(
        {
            "dataset": {"source": str(data), "limit": 24},
            "generator": {"M": 4, "model": "sim"},
            "completer": {"N": 2, "model": "sim", **settings},
            "serving": {"base_url": sim.base_url, "concurrency": 16},
            "output": {"path": str(output)},
            "execution": {"shard_size": 8, "workers": 4},
        }
    )
    return run_flow(config)


def shard_rows(output: Path, stage: str) -> list[dict[str, Any]]:
    rows = []
    for path in sorted((output / ".work").glob(f"{stage}-*/shard-*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{}, {"difficulty_filter": True}], ids=["plain", "filter"])
def test_the_flow_writes_the_same_dataset_handed_over_or_not(
    prefect_harness: None,
    gsm8k_test: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    settings: dict[str, Any],
) -> None:
    from flows import handoff as handoffs
    from flows.placement import Submitter

    handed: list[str] = []
    put = handoffs.Handoff.put

    def counted(self: Handoff, problem_id: str, solutions: Any) -> None:
        handed.append(problem_id)
        put(self, problem_id, solutions)

    monkeypatch.setattr(handoffs.Handoff, "put", counted)
    with SimulatedMathModel(SimulatorConfig(), gsm8k_test) as sim:
        over = run(sim, gsm8k_test, tmp_path / "over", **settings)
        assert len(handed) == 24  # every question handed over as it was generated
        with monkeypatch.context() as patch:
            patch.setattr(Submitter, "hands_over", property(lambda self: False))
            after = run(sim, gsm8k_test, tmp_path / "after", **settings)
    assert len(handed) == 24
    for stage in ("generate", "complete"):
        assert shard_rows(tmp_path / "over", stage) == shard_rows(tmp_path / "after", stage)
    for name in ("rows_labelled", "rows_not_labelled", "rows_out", "quality"):
        assert over[name] == after[name]
    assert over["stages"]["complete"]["requests"] == after["stages"]["complete"]["requests"]
    raw = (tmp_path / "over" / "raw" / "data.jsonl").read_text()
    assert raw == (tmp_path / "after" / "raw" / "data.jsonl").read_text()
