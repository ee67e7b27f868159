"""One regression test per bug of the distilabel 1.5.3 recipe listed in docs/design.md."""

from mshep.backends.base import Completion
from mshep.backends.fake import FakeBackend
from mshep.batches import split_usage
from mshep.completion import label_solutions
from mshep.config import CompleterConfig, GeneratorConfig, GoldenConfig, RunConfig
from mshep.formats import DROP_UNKNOWN, format_rows
from mshep.generation import generate_solutions
from mshep.records import Hard, Problem, Usage
from tests.helpers import make_target

# The recipe's estimation (rollouts from every prefix, right candidates too): what bugs 2-4 and 9
# were seen in. The default, first_error with the witness rule, asks no rollout of a right one.
RECIPE = {"strategy": "per_step", "witness": False}
PROBLEM = Problem(id="0", question="Janet has 9 eggs at $2 each. How much does she make?")


def test_bug_1_answers_compared_by_value_not_string():
    backend = FakeBackend(responder=lambda r: ["Step 2: 9 * 2 = 18. The answer is: $18.00"] * r.n)
    out = label_solutions(
        backend, [make_target(steps=2, answer="18 dollars")], CompleterConfig(N=2)
    )
    assert [label.hard for label in out.solutions[0].labels] == [Hard.GOOD, Hard.GOOD]


def test_bug_2_empty_or_failed_rollout_does_not_make_a_step_bad():
    replies = [
        Completion(text=""),
        Completion(finish_reason="error"),
        Completion(text="Step 2: ... 9 * 2 =", finish_reason="length"),
        Completion(text="Step 2: 9 * 2 = 18. The answer is: 18"),
    ]
    recipe = CompleterConfig(N=4, **RECIPE)
    out = label_solutions(FakeBackend(replies), [make_target(steps=2)], recipe)
    first = out.solutions[0].labels[0]
    assert first.hard is Hard.GOOD and (first.valid, first.correct) == (1, 1)

    all_failed = [Completion(text=""), Completion(finish_reason="error")]
    recipe = CompleterConfig(N=2, **RECIPE)
    out = label_solutions(FakeBackend(all_failed), [make_target(steps=2)], recipe)
    assert out.solutions[0].labels[0].hard is Hard.UNKNOWN
    assert format_rows(out.solutions, "trl").dropped == {DROP_UNKNOWN: 1}


def test_bug_3_fewer_than_n_rollouts_still_label_the_step():
    short = FakeBackend(responder=lambda r: ["The answer is: 5"])  # 1 reply where N=4 were asked
    out = label_solutions(short, [make_target(steps=3)], CompleterConfig(N=4, **RECIPE))
    labels = out.solutions[0].labels
    assert [label.hard for label in labels] == [Hard.BAD, Hard.BAD, Hard.GOOD]
    assert (labels[0].valid, labels[0].rollouts) == (1, 4)


def test_bug_4_structured_output_is_parsed_and_labelled():
    solution_json = '{"steps": ["Step 1: 9 * 2 = 18 dollars."], "answer": "18"}'
    two_steps = '{"steps": ["She has 9 eggs.", "9 * 2 = 18"], "answer": "18"}'
    golden = GoldenConfig(source="model", structured_output=True)
    gold = generate_solutions(FakeBackend([solution_json]), [PROBLEM], golden, 1, "golden")
    assert gold.solutions["0"][0].answer == "18"
    assert gold.solutions["0"][0].steps == ["9 * 2 = 18 dollars."]

    generator = GeneratorConfig(M=1, structured_output=True)
    candidates = generate_solutions(FakeBackend([two_steps]), [PROBLEM], generator, 1, "generate")
    target = make_target(steps=2)
    target = type(target)(
        problem_id="0",
        question=PROBLEM.question,
        golden_answer="18",
        solution=candidates.solutions["0"][0],
    )
    rollouts = FakeBackend(responder=lambda r: ['{"steps": ["9*2=18"], "answer": "18"}'] * r.n)
    out = label_solutions(
        rollouts, [target], CompleterConfig(N=2, structured_output=True, **RECIPE)
    )
    assert rollouts.requests[0].response_format is not None
    assert [label.hard for label in out.solutions[0].labels] == [Hard.GOOD, Hard.GOOD]

    broken = generate_solutions(FakeBackend(['{"solutions": ']), [PROBLEM], golden, 1, "golden")
    assert broken.solutions["0"] == []
    assert broken.failures[0].reason.startswith("invalid JSON")


def test_bug_5_token_statistics_belong_to_their_own_row():
    replies = [
        Completion(text="Step 1: a. The answer is: 1", completion_tokens=7),
        Completion(text="Step 1: b, longer. The answer is: 2", completion_tokens=13),
    ]
    out = generate_solutions(FakeBackend(replies), [PROBLEM], GeneratorConfig(M=2), 2, "generate")
    first, second = out.solutions["0"]
    assert (first.usage.completion_tokens, second.usage.completion_tokens) == (7, 13)
    assert first.usage.prompt_tokens + second.usage.prompt_tokens == out.usage.prompt_tokens
    parts = split_usage(Usage(requests=1, prompt_tokens=3, completion_tokens=9), [Completion()] * 3)
    assert sum(p.completion_tokens for p in parts) == 9


def test_bug_6_one_malformed_reply_loses_only_itself():
    problems = [PROBLEM.model_copy(update={"id": str(i)}) for i in range(3)]
    replies = ["Step 1: 9*2=18. The answer is: 18", "}{ garbage", "Step 1: 18. The answer is: 18"]
    out = generate_solutions(FakeBackend(replies), problems, GeneratorConfig(M=1), 1, "generate")
    assert [len(out.solutions[p.id]) for p in problems] == [1, 0, 1]
    (failure,) = out.failures
    assert (failure.problem_id, failure.reason) == ("1", "no final answer")


def test_bug_7_formatting_keeps_every_character_of_every_step():
    target = make_target(steps=2)
    out = label_solutions(FakeBackend(["The answer is: 18"]), [target], CompleterConfig(N=1))
    (row,) = format_rows(out.solutions, "math_shepherd").rows
    for k, step in enumerate(target.solution.steps, start=1):
        assert f"Step {k}: {step} ки" in row["input"]


def test_bug_8_default_max_tokens_fits_a_solution_and_truncation_is_reported():
    config = RunConfig()
    assert min(config.generator.sampling.max_tokens, config.completer.sampling.max_tokens) >= 1024
    cut = Completion(text="Step 1: 9 * 2 = 18. The answer is: 1", finish_reason="length")
    backend = FakeBackend([cut])
    out = generate_solutions(backend, [PROBLEM], config.generator, 1, "generate")
    assert backend.requests[0].max_tokens == config.generator.sampling.max_tokens
    assert out.solutions["0"] == [] and out.failures[0].reason == "reply cut at max_tokens"


def test_bug_9_requests_of_a_shard_go_out_together_not_in_waves():
    targets = [make_target(steps=6, problem_id=str(i)) for i in range(20)]
    backend = FakeBackend(responder=lambda r: ["The answer is: 18"] * r.n)
    label_solutions(backend, targets, CompleterConfig(N=4, **RECIPE))
    assert len(backend.calls) == 1
    assert len(backend.calls[0]) == 20 * 5
