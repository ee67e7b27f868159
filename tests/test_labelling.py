import pytest

from mshep.backends.base import Completion
from mshep.completion import read_rollout
from mshep.labelling import (
    FirstError,
    Labeller,
    PerStep,
    PrefixQuery,
    label_from_rollouts,
    make_strategy,
)
from mshep.records import Hard, LabelSource, Rollout, RolloutStatus
from tests.helpers import make_target

OK_RIGHT = Rollout(status=RolloutStatus.OK, answer="18", correct=True)
OK_WRONG = Rollout(status=RolloutStatus.OK, answer="7", correct=False)
FAILED = [
    Rollout(status=RolloutStatus.ERROR),
    Rollout(status=RolloutStatus.UNPARSEABLE),
    Rollout(status=RolloutStatus.TRUNCATED),
]


def test_hard_label_good_when_any_valid_rollout_reaches_golden():
    label = label_from_rollouts([OK_WRONG, OK_WRONG, OK_RIGHT, OK_WRONG], n=4)
    assert label.hard is Hard.GOOD
    assert (label.valid, label.correct, label.soft) == (4, 1, 0.25)


def test_bad_when_every_valid_rollout_misses():
    label = label_from_rollouts([OK_WRONG, *FAILED], n=4)
    assert label.hard is Hard.BAD
    assert (label.valid, label.correct, label.soft, label.rollouts) == (1, 0, 0.0, 4)


def test_failed_rollouts_count_as_neither():
    label = label_from_rollouts([OK_RIGHT, *FAILED], n=4)
    assert label.hard is Hard.GOOD
    assert label.soft == 1.0  # 1 correct of 1 valid, not 1 of 4


def test_unknown_when_no_valid_rollout():
    label = label_from_rollouts(FAILED, n=4)
    assert label.hard is Hard.UNKNOWN
    assert label.soft is None
    assert label.valid == 0


def test_missing_rollouts_count_as_failed():
    label = label_from_rollouts([OK_WRONG], n=4)
    assert label.hard is Hard.BAD
    assert label.rollouts == 4 and label.valid == 1


def test_per_step_asks_every_prefix_but_the_whole_in_one_round():
    targets = [make_target(steps=4), make_target(steps=1, problem_id="q1")]
    labeller = Labeller(targets, 4, PerStep(witness=False))
    queries = labeller.pending()
    assert queries == [PrefixQuery(0, 1), PrefixQuery(0, 2), PrefixQuery(0, 3)]
    for query in queries:
        labeller.submit(query, [OK_RIGHT] * 4)
    assert labeller.done and labeller.pending() == []
    assert labeller.rounds == 1


def test_last_step_labelled_by_its_own_answer_without_rollouts():
    labeller = Labeller([make_target(steps=2, answer="19", golden="18")], 4, PerStep(witness=False))
    for query in labeller.pending():
        labeller.submit(query, [OK_RIGHT] * 4)
    (result,) = labeller.results()
    assert [label.hard for label in result.labels] == [Hard.GOOD, Hard.BAD]
    assert result.labels[-1].source is LabelSource.FINAL_ANSWER
    assert result.labels[-1].rollouts == 0
    assert result.first_bad_step == 2


def test_single_step_solution_needs_no_rollouts():
    labeller = Labeller([make_target(steps=1, answer="$18.00")], 4, PerStep(witness=False))
    assert labeller.pending() == []
    (result,) = labeller.results()
    assert [label.hard for label in result.labels] == [Hard.GOOD]


def test_results_refused_while_prefixes_pending():
    labeller = Labeller([make_target(steps=3)], 2, PerStep(witness=False))
    with pytest.raises(RuntimeError, match="pending"):
        labeller.results()


def test_submit_rejects_duplicates_and_out_of_range_prefixes():
    labeller = Labeller([make_target(steps=3)], 2, PerStep(witness=False))
    labeller.pending()
    labeller.submit(PrefixQuery(0, 1), [OK_RIGHT])
    with pytest.raises(ValueError, match="already"):
        labeller.submit(PrefixQuery(0, 1), [OK_RIGHT])
    with pytest.raises(ValueError, match="outside"):
        labeller.submit(PrefixQuery(0, 3), [OK_RIGHT])


def test_submit_rejects_prefixes_not_asked_for():
    # A first-error search asks for one prefix; an answer for another could break its bracket.
    labeller = Labeller([make_target(steps=8, answer="7")], 2, FirstError())
    assert labeller.pending() == [PrefixQuery(0, 4)]
    with pytest.raises(ValueError, match="not asked"):
        labeller.submit(PrefixQuery(0, 2), [OK_RIGHT])
    labeller.submit(PrefixQuery(0, 4), [OK_RIGHT])
    assert labeller.prefixes_evaluated == 1


@pytest.mark.parametrize("strategy", [PerStep(), FirstError()])
def test_witness_labels_a_right_candidate_without_rollouts(strategy):
    labeller = Labeller([make_target(steps=5, answer="$18")], 4, strategy)
    assert labeller.pending() == [] and labeller.done
    (result,) = labeller.results()
    assert [label.hard for label in result.labels] == [Hard.GOOD] * 5
    assert {label.source for label in result.labels} == {LabelSource.WITNESS}
    assert all(label.soft is None and label.rollouts == 0 for label in result.labels)
    assert result.strategy == strategy.name


def test_per_step_with_witness_still_rolls_out_every_prefix_of_a_wrong_candidate():
    labeller = Labeller([make_target(steps=4, answer="7")], 4, PerStep())
    assert [q.prefix_len for q in labeller.pending()] == [1, 2, 3]


def test_without_witness_first_error_rolls_out_every_prefix_of_a_right_candidate():
    labeller = Labeller([make_target(steps=4)], 2, FirstError(witness=False))
    queries = labeller.pending()
    assert [q.prefix_len for q in queries] == [1, 2, 3]
    for query in queries:
        labeller.submit(query, [OK_RIGHT, OK_WRONG])
    (result,) = labeller.results()
    assert [label.soft for label in result.labels] == [0.5, 0.5, 0.5, 1.0]
    assert labeller.rounds == 1


@pytest.mark.parametrize("witness", [True, False])
def test_make_strategy_passes_the_witness_switch(witness):
    for name in ("per_step", "first_error"):
        strategy = make_strategy(name, witness=witness)
        assert strategy.name == name
        assert strategy.witness is witness


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="per_step"):
        make_strategy("nope")


@pytest.mark.parametrize(
    ("completion", "status", "correct"),
    [
        (Completion(text="Step 3: 9 * 2 = 18. The answer is: $18"), RolloutStatus.OK, True),
        (Completion(text="Step 3: 9 * 3 = 27. The answer is: 27"), RolloutStatus.OK, False),
        (Completion(text="Step 3: so she sells"), RolloutStatus.UNPARSEABLE, None),
        (Completion(text=""), RolloutStatus.UNPARSEABLE, None),
        (
            Completion(text="The answer is: 1", finish_reason="length"),
            RolloutStatus.TRUNCATED,
            None,
        ),
        (Completion(finish_reason="error"), RolloutStatus.ERROR, None),
    ],
)
def test_read_rollout(completion, status, correct):
    rollout = read_rollout(completion, golden_answer="18")
    assert rollout.status is status
    assert rollout.correct is correct


def test_read_structured_rollout():
    good = read_rollout(Completion(text='{"steps": ["9*2=18"], "answer": "18"}'), "18", True)
    bad = read_rollout(Completion(text='{"steps": ["9*2=18"], "answer": '), "18", True)
    assert good.correct is True
    assert bad.status is RolloutStatus.UNPARSEABLE and "JSON" in bad.detail


def test_pending_for_gives_a_candidate_its_next_prefixes_once_its_last_are_answered():
    targets = [make_target(steps=4, answer="7"), make_target(steps=8, answer="7", problem_id="q1")]
    labeller = Labeller(targets, 1, PerStep())
    first = labeller.pending_for(0)
    assert [q.prefix_len for q in first] == [1, 2, 3]
    assert labeller.pending_for(0) == []  # asked already, not answered yet
    labeller.submit(first[0], [OK_RIGHT])
    assert labeller.pending_for(0) == []  # 2 and 3 still open
    for query in first[1:]:
        labeller.submit(query, [OK_WRONG])
    assert labeller.pending_for(0) == []  # done
    assert labeller.rounds == 1 and not labeller.done  # candidate 1 never asked


def test_rounds_is_the_longest_chain_of_probes_of_any_candidate():
    # First-error search, every prefix good: L=8 probes 4, 6, 7; L=4 probes 2, 3; L=2 probe 1.
    targets = [make_target(steps=s, answer="7", problem_id=f"L{s}") for s in (8, 4, 2)]
    labeller = Labeller(targets, 1, FirstError())
    chains = {index: 0 for index in range(3)}
    waiting = {index: labeller.pending_for(index) for index in range(3)}
    while any(waiting.values()):
        for index, queries in waiting.items():
            for query in queries:
                labeller.submit(query, [OK_RIGHT])
            chains[index] += bool(queries)
            waiting[index] = labeller.pending_for(index)
    assert chains == {0: 3, 1: 2, 2: 1} and labeller.depths == [3, 2, 1]
    assert labeller.rounds == 3 and labeller.done
