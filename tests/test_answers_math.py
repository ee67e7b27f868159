"""answers_match on MATH-style final answers, and the equivalence policy of mshep.answers.

Each row is (candidate, golden, expected). The false rows matter most: a wrong answer counted as
right turns bad steps into good ones.
"""

from __future__ import annotations

import pytest

from mshep.answers import answers_match

MATRICES = [
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    (
        r"\begin{pmatrix} -1 \\ \frac{1}{2} \end{pmatrix}",
        r"\begin{pmatrix}-1\\0.5\end{pmatrix}",
        True,
    ),
    (
        r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        True,
    ),
    (
        r"\begin{pmatrix} 2 & 1 \\ 3 & 4 \end{pmatrix}",
        r"\begin{pmatrix}1&2\\3&4\end{pmatrix}",
        False,
    ),
    (
        r"\begin{pmatrix} 11 \\ -36 \\ -3 \end{pmatrix}",
        r"\begin{pmatrix}11\\-36\\3\end{pmatrix}",
        False,
    ),
    ("11", r"\begin{pmatrix} 11 \\ -36 \\ -3 \end{pmatrix}", False),
    (r"\begin{pmatrix} 11 \\ -36 \\ -3 \end{pmatrix}", "11", False),
    (r"\begin{pmatrix} 1 \\ 2 \\ 3 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
]

VECTORS = [
    # Policy: a row or column vector is its entries in order, however it is written.
    ("(1, 2)", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
    (r"\begin{pmatrix} 1 & 2 \end{pmatrix}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", True),
    ("(2, 1)", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", False),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\left(3,\frac{\pi}{2}\right)", True),
    (r"(3, \frac{\pi}{2})", r"(3, \frac{\pi}{3})", False),
    ("(1, -2)", "(-2, 1)", False),
]

INTERVALS = [
    ("[0,1)", r"\left[0, 1\right)", True),
    (r"(-\infty, 2] \cup (3, \infty)", r"(-\infty,2]\cup(3,\infty)", True),
    (r"(-\infty, 2] \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)", False),
    ("(0, 1)", "0 < x < 1", True),
    ("[0, 1)", r"0 \le x < 1", True),
    ("(0, 1]", "[0, 1]", False),
    (r"(-\infty, 0)", r"(0, \infty)", False),
]

UNITS = [
    (r"166 \text{ cm}^2", "166", True),
    (r"5\text{ m/s}", "5", True),
    (r"12 \text{ inches}", "12", True),
    (r"12 \text{ inches}", "13", False),
    (r"\$5.00", "5", True),
    (r"1 - x", "1", False),
    (r"5/x", "5", False),
]

TIMES = [
    ("4:30 p.m.", r"\text{4:30 p.m.}", True),
    ("4:45 p.m.", r"\text{4:30 p.m.}", False),
    ("16:30", r"\text{4:30 p.m.}", True),
    ("4:30 a.m.", r"\text{4:30 p.m.}", False),
    (r"\text{9:00 a.m.}", "9 a.m.", True),
]

SCIENTIFIC = [
    ("0.00001", "1e-5", True),
    (r"1.5 \times 10^{3}", "1500", True),
    (r"10^{-5}", "0.00001", True),
    ("1.5e3", "150", False),
]

SETS_AND_LISTS = [
    # Policy: a bare list and a set are unordered; each side must give every answer, once.
    (r"\{1,2,3\}", r"\{3,2,1\}", True),
    ("1, 2", "2, 1", True),
    (r"\{1, 2\}", "1, 2", True),
    ("-9, -1", "-1, -9", True),
    ("-9", "-1, -9", False),
    ("-1, -9", "-9", False),
    ("1, 2, 3", "1, 2", False),
    # The reference decides whether order matters.
    ("(2, 1)", "1, 2", True),
    (r"\{2, 1\}", "(1, 2)", False),
    (r"2 \text{ and } 3", "2, 3", True),
    # Policy: ± is the two answers.
    (r"\pm 2", "2, -2", True),
    (r"\pm 2", r"\{-2, 2\}", True),
    (r"\pm 2", "2", False),
    (r"1 \pm \sqrt{2}", r"1 + \sqrt{2}, 1 - \sqrt{2}", True),
]

TEXT = [
    (r"\text{Friday}", "Friday", True),
    (r"\text {Friday}", "friday", True),
    (r"\textbf{(C)}", "C", True),
    (r"\text{(C)}", "(C)", True),
    (r"\text{Friday}", r"\text{Saturday}", False),
    (r"\text{(B)}", "C", False),
    (r"\text{even}", r"\text{odd}", False),
]

DEGREES = [
    (r"30^\circ", "30", True),
    (r"30^{\circ}", "30", True),
    ("30°", "30", True),
    ("30 degrees", "30", True),
    (r"45^\circ", "30", False),
    (r"\frac{\pi}{6}", r"30^\circ", False),  # radians are not converted
]

PERCENTAGES = [
    (r"25\%", "25", True),
    (r"25\%", "0.25", True),
    (r"12.5\%", r"\frac{1}{8}", True),
    (r"25\%", "2.5", False),
]

FRACTIONS_AND_RADICALS = [
    # Policy: value, not form: an unreduced fraction equals its reduced form.
    ("411/333", "137/111", True),
    (r"\frac{411}{333}", r"\frac{137}{111}", True),
    (r"\frac{411}{333}", r"\frac{137}{112}", False),
    (r"\dfrac{\sqrt{3}}{3}", r"\frac{1}{\sqrt{3}}", True),
    (r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt{2}}{2}", False),
    (r"2\sqrt{5}", r"\sqrt{20}", True),
    ("x = 3", "3", True),
    ("3", "x = 3", True),
    ("y = 2x + 1", "y = 2x - 1", False),
    ("3 + 2i", "3+2i", True),
    ("3 + 2i", "3 - 2i", False),
]

CASES = (
    MATRICES
    + VECTORS
    + INTERVALS
    + UNITS
    + TIMES
    + SCIENTIFIC
    + SETS_AND_LISTS
    + TEXT
    + DEGREES
    + PERCENTAGES
    + FRACTIONS_AND_RADICALS
)


@pytest.mark.parametrize(("candidate", "golden", "expected"), CASES)
def test_math_equivalence(candidate: str, golden: str, expected: bool) -> None:
    assert answers_match(candidate, golden) is expected


def test_table_covers_true_and_false_cases() -> None:
    assert len(CASES) >= 60
    assert sum(1 for *_, expected in CASES if not expected) >= 25
