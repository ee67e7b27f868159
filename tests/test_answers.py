"""answers_match on GSM8K-style and MATH-style final answers, true and false cases."""

from __future__ import annotations

from fractions import Fraction

import pytest

from mshep.answers import answers_match, parse_number

# (candidate, golden, expected)
CASES: list[tuple[str | None, str | None, bool]] = [
    # GSM8K: one number, written many ways
    ("18", "18", True),
    ("18.0", "18", True),
    ("$18", "18", True),
    ("18 dollars", "18", True),
    ("18.00", "18", True),
    (r"\$18", "18", True),
    (r"\$18.00", "18", True),
    ("18", "$18", True),
    ("18.", "18", True),
    ("18 apples", "18", True),
    ("18 cm²", "18", True),
    ("+5", "5", True),
    (".5", "0.5", True),
    ("0", "0.0", True),
    ("0", "-0", True),
    # thousands separators
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("1,000,000", "1000000", True),
    ("1000000", "1,000,000", True),
    ("1,000,000", "1,000,000.00", True),
    ("$1,234.56", "1234.56", True),
    (r"\$1,000", "1000", True),
    ("1,000 dollars", "1000", True),
    (r"10\,000", "10000", True),
    (r"10{,}000", "10000", True),
    # fractions
    (r"\frac{1}{2}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    ("1/2", "0.5", True),
    (r"\dfrac12", "0.5", True),
    (r"\frac12", "0.5", True),
    (r"\tfrac{1}{2}", "1/2", True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    (r"\frac{2}{4}", "1/2", True),
    (r"\frac{3}{4}", "0.75", True),
    (r"\frac{3}{4}", "3/4", True),
    # negatives
    ("-3", "-3.0", True),
    ("−3", "-3", True),
    (r"-\frac{1}{2}", "-0.5", True),
    ("-0.5", r"-\frac12", True),
    (r"\boxed{-3}", "-3", True),
    # percentages
    ("50%", "50", True),
    ("50%", "0.5", True),
    (r"50\%", "50", True),
    ("50 percent", "50", True),
    ("0.5", "50%", True),
    (r"25\%", "0.25", True),
    ("1/4", "25%", True),
    ("100%", "1", True),
    # wrappers and units
    (r"\boxed{18}", "18", True),
    ("12", r"\boxed{12}", True),
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    (r"\boxed{18}", r"\boxed{18.0}", True),
    (r"18 \text{ dollars}", "18", True),
    (r"18\text{ dollars}", "18", True),
    (r"\text{18 cm}", "18", True),
    (r"5\text{ cm}", "5", True),
    (r"5\text{m}", "5", True),
    (r"5 \mbox{ inches}", "5", True),
    # MATH: symbolic
    (r"\sqrt{2}", r"\frac{2}{\sqrt{2}}", True),
    (r"\frac{\pi}{2}", r"\pi/2", True),
    ("x^2+1", "1+x^2", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"\frac{\sqrt{3}}{2}", r"\frac{1}{2}\sqrt{3}", True),
    (r"2\pi", r"2 \pi", True),
    # MATH: sets, intervals, tuples
    (r"\{1,2,3\}", r"\{3,2,1\}", True),
    ("[0,1)", "[0,1)", True),
    (r"(0, \infty)", r"(0,\infty)", True),
    (r"(-\infty, 2]", r"(-\infty,2]", True),
    (r"\left[ 0, 1 \right)", "[0,1)", True),
    ("(1,2)", "(1, 2)", True),
    (r"\left(1,2\right)", "(1,2)", True),
    ("(1,-2)", "(1, -2)", True),
    # plain text
    ("yes", "Yes", True),
    (r"\text{yes}", "yes", True),
    (r"\boxed{\text{yes}}", "Yes", True),
    ("Monday", "monday", True),
    (r"\text{Monday}", "Monday", True),
    # ---- false cases ----
    ("18", "180", False),
    ("180", "18", False),
    (r"\$18", "180", False),
    ("18", "$180", False),
    ("18", "17", False),
    ("18.5", "18", False),
    ("1,000", "100", False),
    ("1,000", "1000.5", False),
    ("1000000", "1,000,001", False),
    ("0.5", "5", False),
    ("0.5", "50", False),
    ("1/3", "0.33", False),
    ("1/3", "0.333333", False),
    (r"\frac{1}{2}", r"\frac{1}{3}", False),
    ("2", "2.5", False),
    ("4", "4.000001", False),
    ("-3", "3", False),
    ("3", "-3", False),
    ("50%", "5", False),
    ("5%", "0.5", False),
    ("2/0", "0", False),
    ("18 and 20", "18", False),
    ("4x", "4", False),
    ("2i", "2", False),
    ("-2i", "-2", False),
    ("2x", "2y", False),
    ("5k", "5", False),
    ("3.14", r"\pi", False),
    (r"\frac{\pi}{2}", r"\pi", False),
    ("x^2+1", "x^2-1", False),
    ("x^2+1", "x^2+2", False),
    (r"\sqrt{8}", r"\sqrt{2}", False),
    (r"\{1,2\}", r"\{1,3\}", False),
    ("[0,1)", "[0,1]", False),
    (r"(-\infty, 2]", r"(-\infty,2)", False),
    ("(1,2)", "(2,1)", False),
    ("Yes", "no", False),
    ("Monday", "Tuesday", False),
    ("B", "A", False),
    # empty and missing
    ("2", "", False),
    ("", "2", False),
    ("  ", "2", False),
    ("", "", False),
    (None, "2", False),
    ("2", None, False),
    (None, None, False),
]


@pytest.mark.parametrize(("candidate", "golden", "expected"), CASES)
def test_answers_match(candidate: str | None, golden: str | None, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected


def test_table_is_big_and_balanced() -> None:
    assert len(CASES) >= 50
    assert sum(1 for *_, expected in CASES if not expected) >= 20


def test_recipe_bug_1_exact_string_comparison() -> None:
    """The recipe compared final answers with `==` on strings, so a solution ending in "$18"
    for a reference of "18" was labelled wrong. mshep compares the answers' values."""
    candidate, golden = "$18", "18"
    assert candidate != golden  # what the recipe checked
    assert answers_match(candidate, golden)
    assert answers_match("18.00", "18")
    assert answers_match("1,000", "1000")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", (Fraction(18), False)),
        ("$1,000.50", (Fraction(2001, 2), False)),
        (r"\frac{3}{4}", (Fraction(3, 4), False)),
        (r"-\dfrac12", (Fraction(-1, 2), False)),
        ("50%", (Fraction(50), True)),
        (r"50\%", (Fraction(50), True)),
        ("7/2 hours", (Fraction(7, 2), False)),
        (r"\boxed{18}", (Fraction(18), False)),
        ("x^2", None),
        ("18 and 20", None),
        ("4x", None),
        (r"\frac{1}{0}", None),
        ("yes", None),
        ("", None),
    ],
)
def test_parse_number(text: str, expected: tuple[Fraction, bool] | None) -> None:
    assert parse_number(text) == expected
