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


# ---- issue 13: answers that real model output exposed -----------------------------------------


def test_b1_matrix_row_breaks_survive_clean_up() -> None:
    assert answers_match(
        r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"
    )
    assert not answers_match("11", r"\begin{pmatrix} 11 \\ -36 \\ -3 \end{pmatrix}")


@pytest.mark.parametrize(
    ("candidate", "golden", "expected"),
    [
        ("1", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", "1", False),
        (r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
        (
            r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
            r"\begin{pmatrix}1&2\\3&5\end{pmatrix}",
            False,
        ),
        (r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
        # `\rightarrow` is not `\right` followed by "arrow"
        (r"\rightarrow", "arrow", False),
        (r"\leftarrow", "arrow", False),
    ],
)
def test_b1_relatives(candidate: str, golden: str, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected


@pytest.mark.parametrize(
    ("candidate", "golden"),
    [
        ("1 - x", "1"),
        ("5/x", "5"),
        ("5 x", "5"),
        ("5 + x", "5"),
        ("2 pi", "2"),
        ("3 and x", "3"),
        ("5 - 2", "5"),
        ("2^3", "2"),
        ("5!", "5"),
    ],
)
def test_b2_an_operator_after_a_number_is_not_a_unit(candidate: str, golden: str) -> None:
    assert not answers_match(candidate, golden)


@pytest.mark.parametrize(
    ("candidate", "golden"),
    [("5 m/s", "5"), ("18 km/h", "18"), ("6 sq. ft", "6"), ("5 m", "5"), ("3 miles per hour", "3")],
)
def test_b2_units_still_follow_a_number(candidate: str, golden: str) -> None:
    assert answers_match(candidate, golden)


def test_b3_clock_time_is_not_its_hour() -> None:
    assert not answers_match("4:45 p.m.", r"\text{4:30 p.m.}")


@pytest.mark.parametrize(
    ("candidate", "golden", "expected"),
    [
        ("4:30 p.m.", r"\text{4:30 p.m.}", True),
        ("4:30 PM", "4:30 p.m.", True),
        ("4:30pm", "16:30", True),
        ("16:30", "4:30 p.m.", True),
        ("4:30 a.m.", "4:30 p.m.", False),
        ("4:30", "4:30 p.m.", True),  # no meridiem: the clock face must agree
        ("4:30", "4:45", False),
        ("4 p.m.", "4:00 p.m.", True),
        ("4 p.m.", "4", True),
        ("4:45 p.m.", "4", False),
        ("4:45", "4", False),
        ("12:00 a.m.", "0:00", True),
        ("12:30 p.m.", "12:30", True),
        ("4:45 p.m.", "5", False),
    ],
)
def test_b3_relatives_clock_times(candidate: str, golden: str, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected


@pytest.mark.parametrize(
    ("candidate", "golden"),
    [
        (r"166 \text{ cm}^2", "166"),
        (r"166 \text {cm}", "166"),
        (r"166\text{ cm}^{2}", "166"),
        (r"166 \mathrm{cm}^2", "166"),
        ("166 cm^2", "166"),
        (r"\text{\textbf{yes}}", "yes"),
    ],
)
def test_b10_text_with_a_space_and_units_with_exponents(candidate: str, golden: str) -> None:
    assert answers_match(candidate, golden)


@pytest.mark.parametrize(
    ("candidate", "golden", "expected"),
    [
        ("0.00001", "1e-5", True),
        ("1e-5", "0.00001", True),
        ("1E5", "100000", True),
        ("2.5e3", "2,500", True),
        (r"1 \times 10^{-5}", "0.00001", True),
        (r"3.2 \cdot 10^{4}", "32000", True),
        ("1e-5", "1e-6", False),
        ("2e", "2", False),  # Euler's number, not an exponent
    ],
)
def test_b11_scientific_notation(candidate: str, golden: str, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected


@pytest.mark.parametrize(
    ("candidate", "golden", "expected"),
    [
        # exact integers: a relative tolerance made large neighbours equal
        ("1000000000", "1000000001", False),
        ("2147483648", "2147483647", False),
        ("1000000000", "1,000,000,000.0", True),
        # a variable among the words after a number is maths, not a unit
        (r"5\% \text{ of } x", "5", False),
        ("5 x", "5", False),
        # a spaced unit letter or capital is a unit; "a" is an article
        ("5 N", "5", True),
        ("5 m", "5", True),
        ("4 times a day", "4", True),
    ],
)
def test_relatives_numbers_and_units(candidate: str, golden: str, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected
