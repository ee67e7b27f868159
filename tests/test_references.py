"""Reference answers: what becomes a golden answer under each `dataset.answer_format`, and what
is refused because it has no mathematical content (the rule in `mshep.references`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mshep.parsing import ParseFailure
from mshep.references import EMPTY, NOT_MATHS, PLACEHOLDER, parse_reference_answer

FORMATS = ("auto", "gsm8k", "boxed", "plain")
GSM8K = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"

# A bare value, as each format writes it.
WRITTEN = {
    "auto": "{}",
    "gsm8k": "Some working.\n#### {}",
    "boxed": "So the answer is $\\boxed{{{}}}$.",
    "plain": "{}",
}

MATHEMATICAL = [
    "72",
    "-3",
    "1,000",
    "18 dollars",
    r"\frac{1}{2}",
    r"\sqrt{3}",
    r"\text{(C)}",
    r"\textbf{(B)}",
    "(C)",
    "(0, 1]",
    "(1, 2)",
    "x",
    "B",
    "A, C",
    "x = 3",
    "x^2 + 1",
    "f(x)",
    r"\infty",
    "π",
    r"\text{Monday}",
    r"\text{odd}",
    "Monday",
    "John Smith",
    "Yes",
    "even",
    "no solution",
]

NOT_MATHEMATICAL = [
    ("banana", NOT_MATHS),
    ("the answer is banana", NOT_MATHS),
    ("I don't know", NOT_MATHS),
    ("?", NOT_MATHS),
    ("-", NOT_MATHS),
    ("N/A", PLACEHOLDER),
    ("n/a", PLACEHOLDER),
    ("see above", PLACEHOLDER),
    ("See above.", PLACEHOLDER),
    ("none", PLACEHOLDER),
    ("None", PLACEHOLDER),
    ("unknown", PLACEHOLDER),
    ("UNKNOWN", PLACEHOLDER),
    ("TBD", PLACEHOLDER),
    ("T.B.D.", PLACEHOLDER),
    ("null", PLACEHOLDER),
    ("nan", PLACEHOLDER),
    (r"\text{N/A}", PLACEHOLDER),
    ("$$", EMPTY),
    (r"\text{}", EMPTY),
]


@pytest.mark.parametrize("answer_format", FORMATS)
@pytest.mark.parametrize("value", MATHEMATICAL)
def test_a_mathematical_answer_is_kept_in_every_format(answer_format: str, value: str) -> None:
    text = WRITTEN[answer_format].format(value)
    assert parse_reference_answer(text, answer_format) == value


@pytest.mark.parametrize("answer_format", FORMATS)
@pytest.mark.parametrize(("value", "reason"), NOT_MATHEMATICAL)
def test_an_answer_with_no_mathematical_content_is_refused_in_every_format(
    answer_format: str, value: str, reason: str
) -> None:
    text = WRITTEN[answer_format].format(value)
    result = parse_reference_answer(text, answer_format)
    assert isinstance(result, ParseFailure), result
    assert result.reason == reason
    assert result.text and result.text in text  # the answer read, for the loader's report


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("The answer is banana.", NOT_MATHS),  # the marker finds "banana": still refused
        ("Answer: none", PLACEHOLDER),
        ("It depends.\n#### see above", PLACEHOLDER),
        (r"so \boxed{\text{N/A}}", PLACEHOLDER),
        (r"\boxed{banana}", NOT_MATHS),
    ],
)
def test_an_answer_read_from_a_longer_reference_is_checked_too(text: str, reason: str) -> None:
    result = parse_reference_answer(text)
    assert isinstance(result, ParseFailure) and result.reason == reason


def test_plain_checks_the_whole_value() -> None:
    assert parse_reference_answer(r"\boxed{\frac{1}{2}}", "plain") == r"\boxed{\frac{1}{2}}"
    result = parse_reference_answer(r"\boxed{N/A}", "plain")
    assert isinstance(result, ParseFailure) and result.reason == PLACEHOLDER


@pytest.mark.parametrize("answer_format", ["auto", "gsm8k"])
def test_every_bundled_gsm8k_reference_is_kept(answer_format: str) -> None:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines() if line.strip()]
    refused = [
        row["answer"][-30:]
        for row in rows
        if not isinstance(parse_reference_answer(row["answer"], answer_format), str)
    ]
    assert len(rows) == 1319 and refused == []
