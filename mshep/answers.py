"""Pure. Whether two final answers are the same: one function, `answers_match`.

Numbers are compared as exact fractions after the normalisation GSM8K needs (`$18` = `18.00` =
`18 dollars`, `1,000` = `1000`, `\\frac{1}{2}` = `0.5` = `1/2`, `50%` = `50` = `0.5`). Anything
else goes to math-verify, which knows LaTeX, sets, intervals and symbolic equality; when it can
read neither side, a normalised string comparison decides.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction
from functools import lru_cache

# Longer answers are not maths a symbolic checker should try to parse (and could stall on).
_MAX_SYMBOLIC_CHARS = 200

_LATEX_NOISE = re.compile(r"\\(?:left|right|displaystyle|!|,|;|:|\s)|\{,\}|~")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_FRAC = re.compile(r"^(-)?\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$|^(-)?\\[dt]?frac(\d)(\d)$")
_NUMBER = re.compile(
    r"""^(?P<sign>[-+−])?\s*\\?\$?\s*
    (?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)
    (?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?
    \s*(?P<pct>%|percent\b)?""",
    re.VERBOSE,
)
# What may follow a number and still leave it the answer: units and words, no further digits;
# a lone letter right after it is a variable or the imaginary unit (`4x`, `2i`), not a unit.
_UNIT_TAIL = re.compile(r"^(?![A-Za-z]$)[\sA-Za-z.'’²³/\-]*$")


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    boxed = re.fullmatch(r"\\(?:boxed|fbox)\{(.*)\}", text)
    if boxed:
        text = boxed.group(1)
    text = _TEXT_WRAPPER.sub(r" \1", text)  # the space keeps `5\text{m}` a unit: `5 m`
    text = _LATEX_NOISE.sub("", text).replace("\\%", "%")
    text = text.strip().strip("$").strip()
    return text.rstrip(".").strip()


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
    if not match or not _UNIT_TAIL.match(text[match.end() :]):
        return None
    value = Fraction(match.group("num").replace(",", ""))
    if match.group("den"):
        divisor = Fraction(match.group("den"))
        if divisor == 0:
            return None
        value /= divisor
    if match.group("sign") in ("-", "−"):
        value = -value
    return value, bool(match.group("pct"))


def _numbers_equal(a: Fraction, b: Fraction) -> bool:
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
    c_num, g_num = parse_number(candidate), parse_number(golden)
    if c_num is not None and g_num is not None:
        return _numeric_match(c_num, g_num)
    if _normalise_text(candidate) == _normalise_text(golden):
        return True
    if max(len(candidate), len(golden)) > _MAX_SYMBOLIC_CHARS:
        return False
    verdict = _symbolic_match(_strip_wrappers(candidate), _strip_wrappers(golden))
    return bool(verdict)
