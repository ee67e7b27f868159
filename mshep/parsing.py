"""Pure. Model text and dataset answers → steps and final answers.

Every reader returns either what it read or a `ParseFailure` with a reason: an unreadable reply is
never an empty success (the recipe's structured-output path returned "" and labelled nothing).
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict


class ParsedSolution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[str]
    answer: str


class ParseFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str
    text: str = ""

    def __bool__(self) -> Literal[False]:  # lets callers write `if not parsed:`
        return False


# "The answer is: X" (the recipe's convention) wins over other markers; the last one counts.
_ANSWER_IS = re.compile(r"(?:the\s+)?final\s+answer\s+is\b|the\s+answer\s+is\b", re.IGNORECASE)
_LINE_MARKERS = (
    re.compile(r"^\s*####\s*"),  # GSM8K
    re.compile(r"^\s*(?:\*\*)?(?:final\s+answer|answer|a)\s*:(?:\*\*)?\s*", re.IGNORECASE),
)
_STEP_MARKER = re.compile(r"(?:^|(?<=\s))(?:\*\*|#+\s*)?Step\s*(\d+)\s*[:.]\s*(?:\*\*)?", re.I)
_LIST_MARKER = re.compile(r"^\s*(\d+)[.)]\s+", re.MULTILINE)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])|\n")


def _boxed_contents(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every \\boxed{…} / \\fbox{…}, braces balanced."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append((match.start(), i, text[match.end() : i - 1]))
    return found


def clean_answer(raw: str) -> str:
    """The answer itself from the text that follows an answer marker."""
    text = raw.strip()
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1][2].strip()
    text = text.lstrip(":").strip()
    end = _SENTENCE_END.search(text)
    if end:
        text = text[: end.start()]
    text = text.strip().strip("*").strip()
    if text.startswith("$") and text.endswith("$") and text.count("$") == 2 and len(text) > 2:
        text = text[1:-1]  # LaTeX inline maths, not a dollar amount
    return text.rstrip(".").strip()


def _find_answer(text: str) -> tuple[str, int, int] | None:
    """(answer, start of its marker, end of its line) for the final answer in `text`."""
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        last = matches[-1]
        line_end = text.find("\n", last.end())
        line_end = len(text) if line_end < 0 else line_end
        answer = clean_answer(text[last.end() : line_end])
        if answer:
            return answer, last.start(), line_end
    for marker in _LINE_MARKERS:
        for line_match in reversed(list(re.finditer(r"^.*$", text, re.MULTILINE))):
            found = marker.match(line_match.group())
            if found:
                answer = clean_answer(line_match.group()[found.end() :])
                if answer:
                    return answer, line_match.start(), line_match.end()
    boxed = [b for b in _boxed_contents(text) if b[2].strip()]
    if boxed:
        start, end, content = boxed[-1]
        line_end = text.find("\n", end)
        return content.strip(), start, len(text) if line_end < 0 else line_end
    return None


def extract_final_answer(text: str | None) -> str | ParseFailure:
    """The final answer of a reply (a solution or a rollout), or why there is none."""
    if text is None or not text.strip():
        return ParseFailure(reason="empty reply", text=text or "")
    found = _find_answer(text)
    if found is None:
        return ParseFailure(reason="no final answer", text=text)
    return found[0]


def _split_lines(body: str) -> list[str]:
    """Non-empty lines, keeping LaTeX display blocks ($$…$$, \\[…\\], environments) whole."""
    steps: list[str] = []
    current: list[str] = []
    depth, in_dollars = 0, False
    for line in body.splitlines():
        if line.strip():
            current.append(line.strip())
        depth += line.count("\\[") - line.count("\\]") + line.count("\\begin{")
        depth -= line.count("\\end{")
        in_dollars ^= line.count("$$") % 2 == 1
        if current and depth <= 0 and not in_dollars:
            steps.append("\n".join(current))
            current, depth = [], 0
    if current:
        steps.append("\n".join(current))
    return steps


def split_steps(body: str) -> list[str]:
    """Steps of a solution body, without 'Step k:' or list numbering."""
    markers = list(_STEP_MARKER.finditer(body))
    if markers:
        pieces = [body[m.end() : n.start()] for m, n in itertools.pairwise(markers)]
        pieces.append(body[markers[-1].end() :])
        preamble = body[: markers[0].start()].strip()
        if preamble and re.search(r"[\d=]", preamble):
            pieces.insert(0, preamble)
    elif len(_LIST_MARKER.findall(body)) >= 2:
        items = list(_LIST_MARKER.finditer(body))
        pieces = [body[m.end() : n.start()] for m, n in itertools.pairwise(items)]
        pieces.append(body[items[-1].end() :])
        preamble = body[: items[0].start()].strip()
        if preamble and re.search(r"[\d=]", preamble):
            pieces.insert(0, preamble)
    else:
        pieces = _split_lines(body)
    steps = [re.sub(r"[ \t]*\n[ \t]*", "\n", p.strip()) for p in pieces]
    return [s for s in steps if s]


def parse_solution(text: str | None) -> ParsedSolution | ParseFailure:
    """A step-by-step reply → steps and final answer; the answer line stays in the last step."""
    if text is None or not text.strip():
        return ParseFailure(reason="empty reply", text=text or "")
    found = _find_answer(text)
    if found is None:
        return ParseFailure(reason="no final answer", text=text)
    answer, marker_start, line_end = found
    line_start = text.rfind("\n", 0, marker_start) + 1
    answer_line = text[line_start:line_end].strip()
    steps = split_steps(text[:line_start])
    standalone = not text[line_start:marker_start].strip() or bool(
        _STEP_MARKER.match(text[line_start:marker_start])
    )
    if standalone and steps and not _STEP_MARKER.match(answer_line):
        steps[-1] = f"{steps[-1]} {answer_line}"
    else:
        steps.extend(split_steps(answer_line))
    if not steps:
        return ParseFailure(reason="no steps", text=text)
    return ParsedSolution(steps=steps, answer=answer)


def parse_json_solution(text: str | None) -> ParsedSolution | ParseFailure:
    """A structured-output reply: {"steps": [...], "answer": "..."} (or the recipe's
    {"solutions": [{"solution": "Step 1: … The answer is: X"}]}, first solution)."""
    if text is None or not text.strip():
        return ParseFailure(reason="empty reply", text=text or "")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        return ParseFailure(reason=f"invalid JSON: {error.msg} at char {error.pos}", text=text)
    if isinstance(data, dict) and isinstance(data.get("solutions"), list) and data["solutions"]:
        data = data["solutions"][0]
    if isinstance(data, dict) and isinstance(data.get("solution"), str):
        return parse_solution(data["solution"])
    if not isinstance(data, dict):
        return ParseFailure(reason="JSON is not an object", text=text)
    steps, answer = data.get("steps"), data.get("answer")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        return ParseFailure(reason="JSON 'steps' is not a list of strings", text=text)
    final = clean_answer(str(answer)) if isinstance(answer, str | int | float) else ""
    if isinstance(answer, bool) or not final:
        return ParseFailure(reason="JSON 'answer' is missing or empty", text=text)
    cleaned = [s for s in (_STEP_MARKER.sub("", s, count=1).strip() for s in steps) if s]
    if not cleaned:
        return ParseFailure(reason="no steps", text=text)
    return ParsedSolution(steps=cleaned, answer=final)


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
        boxed = [b for b in _boxed_contents(text) if b[2].strip()]
        if boxed:
            return boxed[-1][2].strip()
    if answer_format == "auto":
        found = _find_answer(text)
        if found:
            return found[0]
        plain = clean_answer(text) if "####" not in text and "\n" not in text.strip() else ""
        # A bare answer is a value ("72", "\\frac{1}{2}", "Monday"), not a sentence of prose.
        if plain and len(plain.split()) <= _MAX_PLAIN_ANSWER_WORDS:
            return plain
    if answer_format == "plain":
        return text.strip()
    return ParseFailure(
        reason=f"no final answer in the reference ({answer_format} format)", text=text
    )
