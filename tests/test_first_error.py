"""The first-error search: exact on monotone results, documented on unknown and non-monotone ones,
and cheap: ~log2(L) prefixes per wrong candidate, one backend call per round for the whole shard."""

import math
from collections.abc import Callable

import pytest

from mshep.backends.base import Completion, GenerationRequest
from mshep.backends.fake import FakeBackend
from mshep.batches import derive_seed
from mshep.completion import label_solutions
from mshep.config import CompleterConfig
from mshep.labelling import FirstError, Labeller, PerStep, search_bracket
from mshep.records import Hard, LabelledSolution, LabelSource, Rollout, RolloutStatus
from tests.helpers import make_target

GOLDEN, WRONG = "18", "7"
CASES = [(steps, bad) for steps in range(1, 13) for bad in range(1, steps + 1)]


def key(steps: int, bad: int) -> str:
    return f"L{steps}-bad{bad}"


def responder(reaches: Callable[[str, int], bool | None]) -> Callable[[GenerationRequest], list]:
    """Rollouts from prefix k of problem p reach the golden answer iff reaches(p, k); None makes
    every rollout of that prefix fail. The problem and prefix come from the request's tag."""

    def respond(request: GenerationRequest) -> list:
        _, problem, _, prefix = request.tag.split("/")
        verdict = reaches(problem, int(prefix))
        if verdict is None:
            return [Completion(text="Step 9: so", finish_reason="length")] * request.n
        answer = GOLDEN if verdict else WRONG
        return [f"Step 9: done. The answer is: {answer}"] * request.n

    return respond


def first_bad_from_key(problem: str, prefix: int) -> bool:
    return prefix < int(problem.split("bad")[1])


def hard(item: LabelledSolution) -> list[Hard]:
    return [label.hard for label in item.labels]


@pytest.mark.parametrize(("steps", "bad"), CASES, ids=[key(*case) for case in CASES])
def test_search_finds_every_first_bad_step_in_log_prefixes(steps, bad):
    backend = FakeBackend(responder=responder(first_bad_from_key))
    target = make_target(steps=steps, answer=WRONG, problem_id=key(steps, bad))
    out = label_solutions(backend, [target], CompleterConfig(N=4))
    (item,) = out.solutions
    assert item.first_bad_step == bad
    assert hard(item) == [Hard.GOOD] * (bad - 1) + [Hard.BAD] * (steps - bad + 1)
    assert out.prefixes == len(backend.requests) <= math.ceil(math.log2(steps))
    assert out.rounds == len(backend.calls) == out.prefixes  # one probe per round
    assert item.strategy == "first_error"


def test_search_over_a_shard_costs_log_rounds_with_one_call_each():
    targets = [
        make_target(steps=steps, answer=WRONG, problem_id=key(steps, bad)) for steps, bad in CASES
    ]
    targets += [make_target(steps=6, problem_id="right")]  # witnessed: no rollout
    backend = FakeBackend(responder=responder(first_bad_from_key))
    out = label_solutions(backend, targets, CompleterConfig(N=4))
    assert out.rounds == len(backend.calls) == math.ceil(math.log2(12))
    assert len(backend.calls[0]) == sum(1 for steps, _ in CASES if steps > 1)
    assert [item.first_bad_step for item in out.solutions] == [bad for _, bad in CASES] + [None]
    per_step = sum(steps - 1 for steps, _ in CASES)
    assert out.prefixes <= per_step / 2
    assert not any("right" in request.tag for request in backend.requests)


def test_rollout_seeds_derive_from_problem_solution_and_prefix():
    backend = FakeBackend(responder=responder(first_bad_from_key))
    target = make_target(steps=8, answer=WRONG, problem_id=key(8, 3), index=2)
    label_solutions(backend, [target], CompleterConfig(N=4))
    prefixes = [int(request.tag.rsplit("/", 1)[1]) for request in backend.requests]
    assert prefixes == [4, 2, 3]
    for request, prefix in zip(backend.requests, prefixes, strict=True):
        assert request.seed == derive_seed(0, key(8, 3), "complete", 2, prefix)


def test_evaluated_steps_keep_their_values_and_others_get_none():
    # L=8, first bad 6: probes 4 (good), 6 (bad), 5 (good).
    backend = FakeBackend(responder=responder(first_bad_from_key))
    out = label_solutions(
        backend, [make_target(steps=8, answer=WRONG, problem_id=key(8, 6))], CompleterConfig(N=4)
    )
    labels = out.solutions[0].labels
    sources = [label.source for label in labels]
    S, R, F = LabelSource.SEARCH, LabelSource.ROLLOUTS, LabelSource.FINAL_ANSWER
    assert sources == [S, S, S, R, R, R, S, F]
    assert [label.soft for label in labels] == [None, None, None, 1.0, 1.0, 0.0, None, 0.0]
    assert [(label.valid, label.rollouts) for label in labels[3:6]] == [(4, 4)] * 3
    assert all(label.rollouts == 0 for label in labels if label.source is S)


def test_unknown_probe_ends_the_search_and_the_bracket_inside_is_unknown():
    # L=12, truly first bad 9: probe 6 good, probe 9 bad, probe 7 all failed -> 7, 8 unknown.
    def reaches(problem: str, prefix: int) -> bool | None:
        return None if prefix == 7 else prefix < 9

    backend = FakeBackend(responder=responder(reaches))
    out = label_solutions(backend, [make_target(steps=12, answer=WRONG)], CompleterConfig(N=4))
    (item,) = out.solutions
    assert hard(item) == [Hard.GOOD] * 6 + [Hard.UNKNOWN] * 2 + [Hard.BAD] * 4
    probe, inside = item.labels[6], item.labels[7]
    assert (probe.source, probe.valid, probe.rollouts, probe.soft) == (
        LabelSource.ROLLOUTS,
        0,
        4,
        None,
    )
    assert (inside.source, inside.soft) == (LabelSource.SEARCH, None)
    assert item.first_bad_step == 9 and item.has_unknown
    assert out.prefixes == 3  # no retry, no further probe


def test_unknown_first_probe_leaves_everything_but_the_final_step_unknown():
    backend = FakeBackend(responder=responder(lambda problem, prefix: None))
    out = label_solutions(backend, [make_target(steps=4, answer=WRONG)], CompleterConfig(N=2))
    assert hard(out.solutions[0]) == [Hard.UNKNOWN] * 3 + [Hard.BAD]
    assert out.prefixes == 1


NON_MONOTONE = {1: True, 2: False, 3: True, 4: True, 5: True, 6: False, 7: False}


def test_non_monotone_results_give_the_bracketed_transition_not_the_first():
    # Prefix 2 fails, 3-5 succeed again, 6 on fail: the search probes 4 (good), 6 (bad), 5 (good)
    # and never sees prefix 2; its labels are monotone and place the first error at step 6.
    backend = FakeBackend(responder=responder(lambda problem, prefix: NON_MONOTONE[prefix]))
    target = make_target(steps=8, answer=WRONG)
    first_error = label_solutions(backend, [target], CompleterConfig(N=4)).solutions[0]
    assert hard(first_error) == [Hard.GOOD] * 5 + [Hard.BAD] * 3
    assert first_error.first_bad_step == 6

    per_step_cfg = CompleterConfig(N=4, strategy="per_step", witness=False)
    per_step = label_solutions(backend, [target], per_step_cfg).solutions[0]
    G, B = Hard.GOOD, Hard.BAD
    assert hard(per_step) == [G, B, G, G, G, B, B, B]  # raw labels, as measured
    assert per_step.first_bad_step == 2


def test_bracket_probes_stay_consistent_whatever_comes_back():
    # Every probe lies inside the bracket, so the probes seen never contradict each other.
    for pattern in range(2**7):

        def reaches(problem: str, prefix: int, pattern: int = pattern) -> bool:
            return bool(pattern >> (prefix - 1) & 1)

        backend = FakeBackend(responder=responder(reaches))
        out = label_solutions(backend, [make_target(steps=8, answer=WRONG)], CompleterConfig(N=1))
        labels = hard(out.solutions[0])
        first = labels.index(Hard.BAD)
        assert labels == [Hard.GOOD] * first + [Hard.BAD] * (8 - first)
        assert first == 0 or reaches("", first)  # the step before the first bad one was good
        assert first == 7 or not reaches("", first + 1)  # the first bad one was seen bad


def test_first_error_and_per_step_agree_on_monotone_results():
    backend = FakeBackend(responder=responder(first_bad_from_key))
    targets = [make_target(steps=s, answer=WRONG, problem_id=key(s, b)) for s, b in CASES]
    searched = label_solutions(backend, targets, CompleterConfig(N=2)).solutions
    measured = label_solutions(
        backend, targets, CompleterConfig(N=2, strategy="per_step", witness=False)
    ).solutions
    assert [hard(item) for item in searched] == [hard(item) for item in measured]


def test_search_bracket_replays_from_the_rollouts_alone():
    labeller = Labeller([make_target(steps=10, answer=WRONG)], 2, FirstError())
    ok = Rollout(status=RolloutStatus.OK, answer=GOLDEN, correct=True)
    for _ in range(2):  # prefix 5 good, then prefix 7 good
        (query,) = labeller.pending()
        labeller.submit(query, [ok])
    bracket = search_bracket(labeller.states[0])
    assert (bracket.good, bracket.bad, bracket.probe) == (7, 10, 8)


def test_single_step_wrong_candidate_needs_no_rollout():
    labeller = Labeller([make_target(steps=1, answer=WRONG)], 4, FirstError())
    assert labeller.pending() == []
    (item,) = labeller.results()
    assert hard(item) == [Hard.BAD] and item.labels[0].source is LabelSource.FINAL_ANSWER


def test_per_step_and_first_error_share_the_state_machine():
    for strategy in (PerStep(witness=False), FirstError()):
        labeller = Labeller([make_target(steps=3, answer=WRONG)], 1, strategy)
        while queries := labeller.pending():
            for query in queries:
                labeller.submit(
                    query, [Rollout(status=RolloutStatus.OK, answer="1", correct=False)]
                )
        assert hard(labeller.results()[0]) == [Hard.BAD] * 3
