"""Pure. The final answer of a dataset's reference solution: GSM8K's '#### 72', MATH's
'\\boxed{…}', or a bare value, by `dataset.answer_format`. A reference that yields no answer, or
an answer that is not a mathematical value, is a `ParseFailure` with a reason, which the loader
reports with its row, column and value: it never becomes a golden answer, since every step of
that question would then be labelled against it.

When an answer has mathematical content (the same rule under every format: auto, gsm8k, boxed,
plain). The answer is first cleaned: `$`, `\\(` `\\)`, Markdown `*`, a final full stop, `\\boxed{…}`
and the text wrappers `\\text{…}`, `\\textbf{…}`, `\\mathrm{…}` (and their kin) are taken off.
Then:

1. Empty after cleaning (`$$`, `\\text{}`, `...`): rejected, "empty reference answer".
2. A placeholder, in any case and punctuation (`N/A`, `none`, `null`, `unknown`, `TBD`,
   `see above`, `see solution`, `not given`): rejected, even inside `\\text{}` or `\\boxed{}`.
3. Accepted when it has a digit (`72`, `18 dollars`, `(0, 1]`), a LaTeX command (`\\frac{1}{2}`,
   `\\sqrt{3}`, `\\infty`), a maths symbol (`= + < > | ^ ~`, `±`, `≤`, `√`, `∞`, a Greek letter)
   or a function applied (`f(x)`); when its words are single letters (a variable or a choice:
   `x`, `B`, `(C)`, `A, C`); when it was written as LaTeX text (`\\text{Monday}`, `\\text{odd}`:
   MATH's way of giving a word answer); when it is a short name, one to three capitalised words
   (`Monday`, `John Smith`, `Yes`); or when it is one of the few words maths answers are (`even`,
   `odd`, `neither`, `yes`, `no`, `true`, `false`, `infinity`, `undefined`, `no solution`).
4. Anything else is rejected, "reference answer has no mathematical content": a lowercase English
   word or phrase (`banana`, `the answer is banana` as a plain answer, `I don't know`), or
   punctuation alone (`?`, `-`).

The rule errs towards rejecting: a rejected row is reported and left out, while a wrong golden
answer would silently label every step of its question bad.
"""

from __future__ import annotations

import re
import unicodedata

from mshep.parsing import ParseFailure, boxed_contents, clean_answer, find_answer

_MAX_PLAIN_ANSWER_WORDS = 6

EMPTY = "empty reference answer"
PLACEHOLDER = "reference answer is a placeholder, not a value"
NOT_MATHS = "reference answer has no mathematical content"

# Compared after `_words`: lowercase, punctuation gone ("N/A" → "na", "T.B.D." → "tbd").
_PLACEHOLDERS = frozenset(
    {
        *("na", "n a", "nan", "none", "null", "nil", "unknown", "unk", "tbd", "tba", "tbc"),
        *("todo", "blank", "empty", "missing", "omitted", "answer", "solution", "idk"),
        *("no answer", "not applicable", "not available", "not given", "not known", "not sure"),
        *("none given", "see above", "see below", "see solution", "see explanation"),
        *("see answer", "see text"),
    }
)
# Words that are answers in maths ("Is f even, odd or neither?"), in any case.
_MATHS_WORDS = frozenset(
    {
        *("even", "odd", "neither", "yes", "no", "true", "false", "infinity", "undefined"),
        *("no solution", "no solutions", "no real solutions"),
    }
)
_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textit|textrm|textsf|texttt|textnormal|mathrm|mathbf|mathit|mathsf|mbox)"
    r"\s*\{([^{}]*)\}"
)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{([^{}]*)\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_FUNCTION = re.compile(r"[A-Za-z]\(")
_LETTERS = re.compile(r"[^\W\d_]+")
_MAX_NAME_WORDS = 3


def _clean(answer: str) -> tuple[str, bool]:
    """The answer without wrappers, and whether any of it was written as LaTeX text."""
    core, wrapped = answer, False
    for _ in range(4):  # innermost first: \\boxed{\\text{N/A}}
        core, texts = _TEXT_WRAPPER.subn(r"\1", core)
        core, boxes = _BOX.subn(r"\1", core)
        wrapped = wrapped or texts > 0
        if not texts + boxes:
            break
    core = core.replace("\\(", " ").replace("\\)", " ").replace("$", " ")
    return core.strip().strip("*").strip().rstrip(".").strip(), wrapped


def _words(text: str, joiner: str) -> str:
    """Lowercase words, punctuation replaced by `joiner` ("N/A" → "na" or "n a")."""
    return " ".join(re.sub(r"[^\w\s]", joiner, text.lower()).split())


def _has_maths(core: str) -> bool:
    if any(c.isdigit() for c in core) or _LATEX_COMMAND.search(core) or _FUNCTION.search(core):
        return True
    return any(
        c == "^" or unicodedata.category(c) == "Sm" or "GREEK" in unicodedata.name(c, "")
        for c in core
    )


def _is_name(words: list[str]) -> bool:
    """One to three capitalised words: a day, a person, a place ("Monday", "John Smith")."""
    return 0 < len(words) <= _MAX_NAME_WORDS and all(w[0].isupper() for w in words)


def why_not_an_answer(answer: str) -> str | None:
    """Why `answer` cannot be a golden answer (the reasons above), or None when it can."""
    core, wrapped = _clean(answer)
    words = _words(core, " ")
    if not words and not _has_maths(core):
        return EMPTY if not core else NOT_MATHS  # "-", "?": punctuation alone
    if words in _PLACEHOLDERS or _words(core, "") in _PLACEHOLDERS:
        return PLACEHOLDER
    letters = _LETTERS.findall(core)
    if _has_maths(core) or all(len(word) == 1 for word in letters):
        return None
    if wrapped or _is_name(letters) or words in _MATHS_WORDS:
        return None
    return NOT_MATHS


def _extract(text: str, answer_format: str) -> str | ParseFailure:
    if answer_format in ("auto", "gsm8k") and "####" in text:
        answer = clean_answer(text.rsplit("####", 1)[1])
        if answer:
            return answer
    if answer_format in ("auto", "boxed"):
        boxed = [b for b in boxed_contents(text) if b[2].strip()]
        if boxed:
            return boxed[-1][2].strip()
    if answer_format == "auto":
        found = find_answer(text)
        if found:
            return found.answer
        plain = clean_answer(text) if "####" not in text and "\n" not in text.strip() else ""
        # A bare answer is a value ("72", "\\frac{1}{2}", "Monday"), not a sentence of prose.
        if plain and len(plain.split()) <= _MAX_PLAIN_ANSWER_WORDS:
            return plain
    if answer_format == "plain":
        return text.strip()
    return ParseFailure(
        reason=f"no final answer in the reference ({answer_format} format)", text=text
    )


def parse_reference_answer(text: str | None, answer_format: str = "auto") -> str | ParseFailure:
    """The final answer of a dataset's reference: GSM8K '#### 72', MATH '\\boxed{…}', or plain;
    a `ParseFailure` when there is none or it is not a mathematical value (its `text` is then the
    answer read, which can be a small part of a long reference)."""
    if text is None or not str(text).strip():
        return ParseFailure(reason=EMPTY, text="" if text is None else str(text))
    answer = _extract(str(text), answer_format)
    if isinstance(answer, ParseFailure):
        return answer
    problem = why_not_an_answer(answer)
    return answer if problem is None else ParseFailure(reason=problem, text=answer)
