"""parse_solution and answers_match on 5,276 real GSM8K model solutions (4 models × 1,319 problems),
checked against the dataset's own correctness labels."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import pytest

from mshep.answers import answers_match
from mshep.parsing import ParsedSolution, parse_solution
from mshep.references import parse_reference_answer

DATA = pathlib.Path(__file__).parent / "data" / "gsm8k"
MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


@dataclass(frozen=True)
class Outcome:
    parsed: bool
    matched: bool  # what mshep says; an unparseable solution is "not correct"
    is_correct: bool  # the dataset's label


def _read_jsonl(path: pathlib.Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    solutions = _read_jsonl(DATA / "example_model_solutions.jsonl")
    references = _read_jsonl(DATA / "test.jsonl")
    assert len(solutions) == len(references) == 1319
    found = []
    for row, reference in zip(solutions, references, strict=True):
        assert row["question"] == reference["question"]
        golden = parse_reference_answer(str(reference["answer"]), "gsm8k")
        assert isinstance(golden, str), golden
        for model in MODELS:
            entry = row[model]
            assert isinstance(entry, dict)
            result = parse_solution(entry["solution"])
            parsed = isinstance(result, ParsedSolution) and bool(result.steps)
            matched = isinstance(result, ParsedSolution) and answers_match(result.answer, golden)
            found.append(Outcome(parsed, matched, bool(entry["is_correct"])))
    return found


def test_real_solutions_parse_and_agree_with_labels(outcomes: list[Outcome]) -> None:
    assert len(outcomes) == 5276
    parsed = [o for o in outcomes if o.parsed]
    rate = len(parsed) / len(outcomes)
    agree = sum(o.matched == o.is_correct for o in outcomes) / len(outcomes)
    agree_parsed = sum(o.matched == o.is_correct for o in parsed) / len(parsed)
    print(f"parsed {rate:.4f}, agreement {agree:.4f}, agreement among parsed {agree_parsed:.4f}")
    assert rate >= 0.99
    assert agree >= 0.99
    assert agree_parsed >= 0.99


def test_unparsed_solutions_are_labelled_wrong(outcomes: list[Outcome]) -> None:
    """What fails to parse is truncated text with no final answer, never a correct solution."""
    assert not any(o.is_correct for o in outcomes if not o.parsed)
