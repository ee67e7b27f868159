"""The stage functions over a scripted backend: requests built and batched, replies read."""

from mshep.backends.base import Completion, GenerationRequest
from mshep.backends.fake import FakeBackend
from mshep.batches import derive_seed, split_usage
from mshep.completion import (
    ALL_RIGHT,
    ALL_WRONG,
    FILTER_STAGE,
    filter_by_difficulty,
    label_solutions,
)
from mshep.config import CompleterConfig, GeneratorConfig
from mshep.generation import generate_solutions
from mshep.labelling import LabelTarget
from mshep.records import Hard, LabelSource, Problem, Usage
from tests.helpers import make_target, prefix_len_of

PROBLEMS = [Problem(id=str(i), question=f"What is {i} + {i}?") for i in range(3)]


def test_generation_is_one_call_with_n_sampling_and_derived_seeds():
    backend = FakeBackend(responder=lambda r: [f"Step 1: add.\nThe answer is: {r.n}"] * r.n)
    out = generate_solutions(backend, PROBLEMS, GeneratorConfig(M=4), m=4, stage_name="generate")
    assert len(backend.calls) == 1
    assert [r.n for r in backend.requests] == [4, 4, 4]
    assert len({r.seed for r in backend.requests}) == 3
    assert backend.requests[0].seed == derive_seed(0, "0", "generate")
    assert all(len(out.solutions[p.id]) == 4 for p in PROBLEMS)
    assert [s.index for s in out.solutions["0"]] == [0, 1, 2, 3]
    assert out.failures == []


def test_seeds_are_stable_and_distinct_per_part():
    assert derive_seed(0, "q1", "complete", 0, 2) == derive_seed(0, "q1", "complete", 0, 2)
    assert derive_seed(0, "q1", "complete", 0, 2) != derive_seed(0, "q1", "complete", 0, 3)
    assert derive_seed(0, "q1", "generate") != derive_seed(1, "q1", "generate")


def test_split_usage_uses_known_counts_and_sums_to_the_total():
    completions = [
        Completion(text="a", completion_tokens=5),
        Completion(text="bb", completion_tokens=15),
    ]
    parts = split_usage(Usage(requests=1, prompt_tokens=11, completion_tokens=20), completions)
    assert [p.completion_tokens for p in parts] == [5, 15]
    assert sum(p.prompt_tokens for p in parts) == 11
    assert sum(p.requests for p in parts) == 1


def test_split_usage_by_length_when_only_the_total_is_known():
    completions = [Completion(text="x" * 10), Completion(text="x" * 30)]
    parts = split_usage(Usage(requests=1, prompt_tokens=4, completion_tokens=100), completions)
    assert [p.completion_tokens for p in parts] == [25, 75]
    assert [p.prompt_tokens for p in parts] == [2, 2]


def rollout_responder(good_until: dict[str, int]):
    """Rollouts reach 18 while the prefix is within the first good steps of its problem."""

    def respond(request: GenerationRequest):
        user = request.messages[-1]["content"]
        problem = request.tag.split("/")[1]
        answer = "18" if prefix_len_of(user) <= good_until[problem] else "5"
        return [f"Step 9: done. The answer is: {answer}"] * request.n

    return respond


def test_labelling_sends_the_whole_shard_in_one_call_per_round():
    targets = [
        make_target(steps=4, problem_id="a"),
        make_target(steps=5, answer="7", problem_id="b"),
    ]
    backend = FakeBackend(responder=rollout_responder({"a": 9, "b": 2}))
    out = label_solutions(
        backend, targets, CompleterConfig(N=4, strategy="per_step", witness=False)
    )
    assert len(backend.calls) == 1 and out.rounds == 1
    assert len(backend.requests) == 3 + 4
    a, b = out.solutions
    assert [label.hard for label in a.labels] == [Hard.GOOD] * 4
    assert [label.hard for label in b.labels] == [
        Hard.GOOD,
        Hard.GOOD,
        Hard.BAD,
        Hard.BAD,
        Hard.BAD,
    ]
    assert b.first_bad_step == 3
    assert b.completion_usage.requests == 4
    assert out.usage.requests == 7


def test_first_error_with_witness_asks_only_the_wrong_candidate_in_log_rounds():
    targets = [
        make_target(steps=4, problem_id="a"),
        make_target(steps=5, answer="7", problem_id="b"),
    ]
    backend = FakeBackend(responder=rollout_responder({"a": 9, "b": 2}))
    out = label_solutions(backend, targets, CompleterConfig(N=4))
    assert [[r.tag for r in call] for call in backend.calls] == [
        ["complete/b/0/2"],
        ["complete/b/0/3"],
    ]
    a, b = out.solutions
    assert {label.source for label in a.labels} == {LabelSource.WITNESS}
    assert b.first_bad_step == 3
    assert (out.rounds, out.prefixes, out.usage.requests) == (2, 2, 2)
    assert b.completion_usage.requests == 2


def candidates(problem_id: str, answers: list[str]) -> list[LabelTarget]:
    return [
        make_target(steps=3, answer=answer, problem_id=problem_id, index=index)
        for index, answer in enumerate(answers)
    ]


def test_difficulty_filter_leaves_out_uniform_questions_with_one_failure_each():
    targets = [
        *candidates("easy", ["18", "$18", "18.0"]),
        *candidates("hard", ["7", "9", "7"]),
        *candidates("mixed", ["18", "7", "18"]),
        *candidates("single", ["7"]),
    ]
    backend = FakeBackend(responder=lambda r: ["The answer is: 18"] * r.n)
    out = label_solutions(backend, targets, CompleterConfig(N=2, difficulty_filter=True))
    assert sorted({item.problem_id for item in out.solutions}) == ["mixed", "single"]
    assert [(f.stage, f.reason, f.problem_id) for f in out.failures] == [
        (FILTER_STAGE, ALL_RIGHT, "easy"),
        (FILTER_STAGE, ALL_WRONG, "hard"),
    ]
    assert not any("/easy/" in r.tag or "/hard/" in r.tag for r in backend.requests)


def test_difficulty_filter_keeps_single_candidate_questions_so_m1_is_not_emptied():
    targets = [*candidates("a", ["18"]), *candidates("b", ["7"])]
    kept, failures = filter_by_difficulty(targets)
    assert kept == targets and failures == []


def test_difficulty_filter_is_off_by_default():
    targets = candidates("easy", ["18", "18"])
    out = label_solutions(FakeBackend(), targets, CompleterConfig(N=2))
    assert len(out.solutions) == 2 and out.failures == []
