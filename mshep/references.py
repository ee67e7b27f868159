"""Pure. The final answer of a dataset's reference solution: GSM8K's '#### 72', MATH's
'\\boxed{…}', or a bare value, by `dataset.answer_format`. A reference that yields no answer is a
`ParseFailure` with a reason, which the loader reports with its row, column and value."""

from __future__ import annotations

from mshep.parsing import ParseFailure, boxed_contents, clean_answer, find_answer

_MAX_PLAIN_ANSWER_WORDS = 6


def parse_reference_answer(text: str | None, answer_format: str = "auto") -> str | ParseFailure:
    """The final answer of a dataset's reference: GSM8K '#### 72', MATH '\\boxed{…}', or plain."""
    if text is None or not str(text).strip():
        return ParseFailure(reason="empty reference answer", text="" if text is None else str(text))
    text = str(text)
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
