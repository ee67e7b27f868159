"""Pure. Whether two final answers are the same: one function, `answers_match`.

The first check that applies decides:

1. Clock times (`4:30 p.m.`, `16:30`, `4 p.m.`) are compared as times of day, never as numbers.
2. Numbers are compared as exact fractions after the normalisation GSM8K needs (`$18` = `18.00` =
   `18 dollars`, `1,000` = `1000`, `\\frac{1}{2}` = `0.5` = `1/2`, `50%` = `50` = `0.5`,
   `1e-5` = `1 \\times 10^{-5}` = `0.00001`, `166 \\text{ cm}^2` = `166`). Only units and words
   may follow the number: `1 - x` and `5/x` are not numbers.
3. The same text once LaTeX wrappers, spacing and case are dropped.
4. math-verify, which knows LaTeX, matrices, sets, intervals and symbolic equality.

Equivalence policy, where graders differ (one policy for every preset; tests/test_answers_math.py):

- Value, not form: `411/333` = `137/111`, `2\\sqrt{5}` = `\\sqrt{20}`, `x = 3` = `3`.
- Sets and bare lists are unordered (`1, 2` = `2, 1` = `\\{1, 2\\}`); tuples, points and vectors
  are ordered (`(1, 2)` ≠ `(2, 1)`); a row or column vector equals the tuple of its entries. The
  reference decides: `(2, 1)` answers `1, 2`, but `\\{2, 1\\}` does not answer `(1, 2)`.
- Several answers: the candidate must give every answer of the reference and no other
  (`-9` ≠ `-1, -9`, and `-1, -9` ≠ `-9`). `\\pm 2` is the two answers `2, -2`, not `2`.
- Intervals must agree on both ends and on which ends are closed; `(0, 1)` = `0 < x < 1`.
- Units, `\\text{}` and degree signs after a number are ignored (`30^\\circ` = `30`); radians and
  degrees are not converted into each other. A percentage equals its number or its fraction.
- Times: `4:30 p.m.` = `16:30` = `4:30` (no a.m./p.m. given: the clock face must agree);
  `4 p.m.` = `4`, but `4:45 p.m.` ≠ `4`.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

# Longer answers are not maths a symbolic checker should try to parse (and could stall on).
_MAX_SYMBOLIC_CHARS = 200

# `\\` (a row break) is matched first so that its second backslash is never taken for `\ `.
_LATEX_NOISE = re.compile(r"\\\\|\\(?:left|right)(?![A-Za-z])|\\displaystyle|\\[!,;:\s]|\{,\}|~")
_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mbox|mathbf)\s*\{([^{}]*)\}"
)
_FRAC = re.compile(r"^(-)?\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^(-)?\\[dt]?frac(\d)(\d)$")
_NUMBER = re.compile(
    r"""^(?P<sign>[-+−])?\s*\\?\$?\s*
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)
    (?:[eE](?P<exp>[-+−]?\d+)
      |\s*(?:\\times|\\cdot|×|·)\s*10\s*\^\s*\{?\s*(?P<exp10>[-+−]?\d+)\s*\}?)?
    (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
    (?:\s*(?P<pct>%|percent\b))?""",
    re.VERBOSE,
)
# What may follow a number and still leave it the answer: a degree sign, then unit words
# ("cm^2", "m/s", "sq. ft"); an operator or a further number makes it an expression.
_UNIT = r"(?:[A-Za-z][A-Za-z.'’]*|['’\"])(?:\^\{?[23]\}?|[²³])?"
_UNIT_TAIL = re.compile(  # one leading \s*: adjacent ones would backtrack quadratically
    rf"\s*(?:(?:\^\s*\{{?\\circ\}}?|°)\s*)?(?:{_UNIT}(?:\s*/\s*{_UNIT}|\s+{_UNIT}|-{_UNIT})*\s*)?"
)
# Words and lone letters that make "2 pi", "3 and x", "5 x" maths rather than a unit.
_MATHS_WORDS = {"pi", "sqrt", "log", "ln", "sin", "cos", "tan", "exp", "and", "or", "plus", "minus"}
_VARIABLES = set("bcdeijknpqrtuvwxyz")  # not "a": "4 times a day" is words
_CLOCK = re.compile(
    r"^(?P<h>\d{1,2})(?::(?P<m>[0-5]\d))?(?::[0-5]\d)?\s*(?:(?P<ap>[ap])\.?\s*m\b\.?)?$", re.I
)
_VECTOR = re.compile(r"^\\begin\{([pb]?matrix)\}(.*)\\end\{\1\}$", re.S)


def _unwrap_boxed(text: str) -> str:
    """`\\boxed{x}` → `x`, only when that one box holds the whole answer."""
    match = re.match(r"\\(?:boxed|fbox)\s*\{", text)
    if not match or not text.endswith("}"):
        return text
    depth = 0
    for i in range(match.end() - 1, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:  # `\boxed{1}, \boxed{2}` closes its first box before the end
            return text[match.end() : -1] if i == len(text) - 1 else text
    return text


def _strip_wrappers(text: str) -> str:
    text = _unwrap_boxed(text.strip())
    previous = None
    while previous != text:  # `\text{\textbf{yes}}` unwraps from the inside out
        previous, text = text, _TEXT_WRAPPER.sub(r" \1", text)  # the space keeps `5 m` a unit
    text = _LATEX_NOISE.sub(lambda m: m[0] if m[0] == "\\\\" else "", text).replace("\\%", "%")
    text = text.strip().strip("$").strip()
    return text.rstrip(".").strip()


def _is_unit_tail(tail: str) -> bool:
    if not _UNIT_TAIL.fullmatch(tail):
        return False
    words = re.findall(r"[A-Za-z]+", tail)
    if any(word.lower() in _MATHS_WORDS or word in _VARIABLES for word in words):
        return False  # "2 pi", "3 and x", "5% of x": maths, not units
    # A letter right after a number is a variable or the imaginary unit (`4x`, `2i`); a spaced
    # capital or a unit letter is a unit (`5 m`, `5 N`).
    return not (len(words) == 1 and tail[:1] == words[0])


def parse_number(text: str) -> tuple[Fraction, bool] | None:
    """The value of a numeric answer and whether it was written as a percentage, else None."""
    text = _strip_wrappers(text)
    frac = _FRAC.match(text)
    if frac:
        sign, num, den = frac.group(1, 2, 3) if frac.group(2) else frac.group(4, 5, 6)
        numerator, denominator = parse_number(num), parse_number(den)
        if numerator is None or denominator is None or denominator[0] == 0:
            return None
        value = numerator[0] / denominator[0]
        return (-value if sign else value), False
    match = _NUMBER.match(text)
    if not match or not _is_unit_tail(text[match.end() :]):
        return None
    value = Fraction(match.group("num").replace(",", ""))
    exponent = match.group("exp") or match.group("exp10")
    if exponent:
        value *= Fraction(10) ** int(exponent.replace("−", "-"))
    if match.group("den"):
        divisor = Fraction(match.group("den"))
        if divisor == 0:
            return None
        value /= divisor
    if match.group("sign") in ("-", "−"):
        value = -value
    return value, bool(match.group("pct"))


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
    if a.denominator == b.denominator == 1:
        return a == b  # a tolerance would make 1000000000 equal 1000000001
    return abs(a - b) <= Fraction(1, 10**9) * max(Fraction(1), abs(b))


def _numeric_match(candidate: tuple[Fraction, bool], golden: tuple[Fraction, bool]) -> bool:
    (c, c_pct), (g, g_pct) = candidate, golden
    if _numbers_equal(c, g):
        return True
    # "50%" answers a question whose reference is 50 or 0.5; a bare 0.5 does not answer "50%"
    # unless the reference itself was written as a percentage.
    if c_pct and _numbers_equal(c / 100, g):
        return True
    return g_pct and _numbers_equal(c, g / 100)


Clock = tuple[int, int, str | None]  # hour as written, minutes, "a"/"p" or None


def _clock(text: str) -> Clock | None:
    """A time of day: `4:30`, `4:30 p.m.`, `4 pm`; a bare number is not one."""
    match = _CLOCK.match(text)
    if not match or not (match["m"] or match["ap"]):
        return None
    hour, meridiem = int(match["h"]), (match["ap"] or "").lower() or None
    if hour > (12 if meridiem else 24):
        return None
    return hour, int(match["m"] or 0), meridiem


def _same_time(a: Clock, b: Clock) -> bool:
    def hour(clock: Clock) -> tuple[int, bool]:  # (hour on a 24-hour clock, known to be so)
        h, _, meridiem = clock
        if meridiem:
            return h % 12 + (12 if meridiem == "p" else 0), True
        return h, h == 0 or h > 12

    (ha, sure_a), (hb, sure_b) = hour(a), hour(b)
    same_hour = ha == hb if sure_a and sure_b else ha % 12 == hb % 12
    return same_hour and a[1] == b[1]


def _time_match(candidate: str, golden: str) -> bool | None:
    """The verdict when either side is a time of day, else None (not a question of time)."""
    c, g = _clock(candidate), _clock(golden)
    if c is None and g is None:
        return None
    # "4 p.m." answers "4"; a bare whole number stands for that hour, on the hour.
    c = c or (_clock(f"{candidate}:00") if candidate.isdigit() else None)
    g = g or (_clock(f"{golden}:00") if golden.isdigit() else None)
    return c is not None and g is not None and _same_time(c, g)


def _vector_as_tuple(text: str) -> str:
    """A one-row or one-column pmatrix/bmatrix → `(a, b, …)`, so that vectors equal tuples."""
    match = _VECTOR.match(text)
    if not match:
        return text
    rows = [row.split("&") for row in match[2].split("\\\\") if row.strip()]
    if len(rows) > 1 and all(len(row) == 1 for row in rows):
        entries = [row[0] for row in rows]
    elif len(rows) == 1 and len(rows[0]) > 1:
        entries = rows[0]
    else:
        return text
    return "(" + ", ".join(entry.strip() for entry in entries) + ")"


def _normalise_text(text: str) -> str:
    return re.sub(r"\s+", "", _strip_wrappers(text)).lower()


@lru_cache(maxsize=65536)
def _symbolic_match(candidate: str, golden: str) -> bool | None:
    """math-verify's verdict, or None when it cannot read one side."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # Its warning that timeouts are off is expected: _MAX_SYMBOLIC_CHARS bounds the work instead.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def read(text: str) -> list[object]:
        wrapped = text if ("$" in text or "\\boxed" in text) else f"${text}$"
        # Timeouts use SIGALRM, which only works in the main thread; Prefect runs tasks in threads.
        return list(parse(wrapped, extraction_config=config, parsing_timeout=None))

    try:
        gold, target = read(golden), read(candidate)
        if not gold or not target:
            return None
        return bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # the checker is a heuristic; its failure means "cannot tell", not a crash
        return None


def answers_match(candidate: str | None, golden: str | None) -> bool:
    """True when `candidate` is the same final answer as `golden`."""
    if candidate is None or golden is None:
        return False
    if not candidate.strip() or not golden.strip():
        return False
    c_text, g_text = _strip_wrappers(candidate), _strip_wrappers(golden)
    same_time = _time_match(c_text, g_text)
    if same_time is not None:
        return same_time
    c_num, g_num = parse_number(c_text), parse_number(g_text)
    if c_num is not None and g_num is not None:
        return _numeric_match(c_num, g_num)
    if _normalise_text(candidate) == _normalise_text(golden):
        return True
    if max(len(candidate), len(golden)) > _MAX_SYMBOLIC_CHARS:
        return False
    verdict = _symbolic_match(_vector_as_tuple(c_text), _vector_as_tuple(g_text))
    return bool(verdict)
