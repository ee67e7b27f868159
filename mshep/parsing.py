"""Pure. Model text → steps and final answers (a dataset's reference answer: `mshep.references`).

Every reader returns either what it read or a `ParseFailure` with a reason: an unreadable reply is
never an empty success (the recipe's structured-output path returned "" and labelled nothing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Literal, NamedTuple

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


# Answer markers. Where a reply has several, the one nearest its end wins (B4, B5 of issue 13):
# models restate, correct and box answers as they go, and "the answer is" also appears in prose.
_ANSWER_IS = re.compile(r"(?:the\s+)?final\s+answer\s+is\b|the\s+answer\s+is\b", re.IGNORECASE)
_STEP_PREFIX = r"(?:\*\*|#{1,6}[ \t]*)?Step[ \t]*(\d+)[ \t]*[:.][ \t]*(?:\*\*)?[ \t]*"
# "Answer: 18", "**Final Answer:**", or "Final Answer" alone on its line (the answer follows).
_LINE_ANSWER = re.compile(
    r"^[ \t]*(?:#+[ \t]*)?(?:\*\*)?(?:final\s+answer|answer|a)[ \t]*"
    r"(?::|(?<=answer)(?=[ \t]*(?:\*\*)?[ \t]*$))(?:\*\*)?[ \t]*",
    re.IGNORECASE | re.MULTILINE,
)
# GSM8K's "#### 72", also as the last step ("Step 2: #### 72"). "#####" and "#### Part 1",
# "#### Step 2: …", "#### 1. Compute the area" are Markdown headings: an answer is a value
# (it starts like a number or LaTeX) or a single word.
_HEADING = (
    r"(?:step|part|case|solution|(?:final\s+)?answer|conclusion|summary|problem|question|note"
    r"|explanation|verification|method|approach|check)\b|\d+[.)]\s+[A-Za-z]"
)
_GSM8K = re.compile(
    rf"^[ \t]*(?:{_STEP_PREFIX})?####(?!#)[ \t]*(?!{_HEADING})(?=[-+−$\\.(\[{{*\d]|\S+[ \t]*$)",
    re.IGNORECASE | re.MULTILINE,
)
# Step and list markers count at the start of a line only ("from Step 1. we get" is text), and a
# "Step k:" inside a line only right after a sentence and in sequence ("… = 5. Step 2: …").
_STEP_MARKER = re.compile(rf"^[ \t]*(?:[-*+][ \t]+)?{_STEP_PREFIX}", re.IGNORECASE | re.MULTILINE)
_INLINE_STEP = re.compile(r"(?<=[.!?])[ \t]+(?:\*\*)?Step[ \t]*(\d+)[ \t]*:[ \t]*(?:\*\*)?[ \t]*")
_LIST_MARKER = re.compile(r"^[ \t]*(\d+)[.)][ \t]+", re.MULTILINE)
# A list item ends at a blank line unless what follows is indented (a continuation of the item).
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n(?=\S)")
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])|\n")
_ENVIRONMENT = re.compile(r"\\begin\{([A-Za-z]+\*?)\}.*?\\end\{\1\}", re.DOTALL)
# `\\[4pt]` (a row break with spacing) opens no display block.
_BLOCK_OPEN = re.compile(r"(?<!\\)\\\[|\\begin\{")
_BLOCK_CLOSE = re.compile(r"(?<!\\)\\\]|\\end\{")
_DISPLAY = re.compile(r"^(?:\\\[|\\\(|\$\$)(.*?)(?:\\\]|\\\)|\$\$)", re.DOTALL)


class _Found(NamedTuple):
    answer: str
    end: int  # end of the line (or the line after the marker) that holds the answer
    start: int  # where its marker starts
    rank: int  # on the same line, an answer marker covers the \boxed{} it contains


def boxed_contents(text: str) -> list[tuple[int, int, str]]:
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
    boxed = boxed_contents(text)
    if boxed:
        return boxed[-1][2].strip()
    text = text.lstrip(":").strip()
    display = _DISPLAY.match(text)
    if display:
        text = display.group(1).strip()
    environment = _ENVIRONMENT.match(text)
    if environment:  # a matrix over several lines is one answer, not its first line
        return " ".join(environment.group().split())
    end = _SENTENCE_END.search(text)
    if end:
        text = text[: end.start()]
    text = text.strip().strip("*").strip()
    if text.startswith("$") and text.endswith("$") and text.count("$") == 2 and len(text) > 2:
        text = text[1:-1]  # LaTeX inline maths, not a dollar amount
    return text.rstrip(".").strip()


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _after_marker(text: str, pos: int) -> tuple[str, int]:
    """The answer after a marker ending at `pos`, and the end of the line holding it."""
    end = _line_end(text, pos)
    if text[pos:end].strip(" \t:*$\\[("):
        return clean_answer(text[pos:end]), end
    # "The final answer is" / "Final Answer:" ending its line: the answer is on the next one.
    following = len(text) - len(text[end:].lstrip())
    if following >= len(text) or _STEP_MARKER.match(text[following:]):
        return "", end
    _, block_end, _ = next(_blocks(text[following:]))  # a line, or a whole \[ … \] block
    next_end = following + len(text[following : following + block_end].rstrip("\n"))
    return clean_answer(text[following:next_end]), next_end


def _candidates(text: str) -> Iterator[_Found]:
    for match in _ANSWER_IS.finditer(text):
        yield _Found(*_after_marker(text, match.end()), rank=1, start=match.start())
    for match in _LINE_ANSWER.finditer(text):
        if not _ANSWER_IS.match(text, match.end()):  # "Final Answer: The final answer is 5"
            yield _Found(*_after_marker(text, match.end()), rank=1, start=match.start())
    for match in _GSM8K.finditer(text):
        end = _line_end(text, match.end())
        yield _Found(clean_answer(text[match.end() : end]), end, match.start(), rank=1)
    for start, end, content in boxed_contents(text):
        yield _Found(content.strip(), _line_end(text, end), start, rank=0)


def _is_prose(answer: str) -> bool:  # "expected to be an integer": what a marker in prose gives
    return len(answer.split()) >= 4 and not re.search(r"[\d\\=^_{}()\[\]$+*/<>|-]", answer)


def find_answer(text: str) -> _Found | None:
    """The final answer of `text`: the last marker's, a marker in prose only when nothing else."""
    found = [c for c in _candidates(text) if c.answer]
    best = max(found, key=lambda c: (not _is_prose(c.answer), c.end, c.rank, c.start), default=None)
    if best is None:
        return None
    # Markers that give the same answer ("### Final Answer" then "The final answer is $\boxed{3}$")
    # all belong to the answer lines: the region starts at the first of them.
    same = [c.start for c in found if (c.answer, c.end) == (best.answer, best.end)]
    return best._replace(start=min(same))


def _find_or_fail(text: str | None) -> _Found | ParseFailure:
    if text is None or not text.strip():
        return ParseFailure(reason="empty reply", text=text or "")
    return find_answer(text) or ParseFailure(reason="no final answer", text=text)


def extract_final_answer(text: str | None) -> str | ParseFailure:
    """The final answer of a reply (a solution or a rollout), or why there is none."""
    found = _find_or_fail(text)
    return found.answer if isinstance(found, _Found) else found


def _blocks(body: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, closed) of each non-empty line, or of each LaTeX display block ($$…$$,
    \\[…\\], an environment) taken whole; only the last can be open."""
    start, depth, in_dollars, pos = -1, 0, False, 0
    for line in body.splitlines(keepends=True):
        start = pos if start < 0 and line.strip() else start
        depth += len(_BLOCK_OPEN.findall(line)) - len(_BLOCK_CLOSE.findall(line))
        in_dollars ^= line.count("$$") % 2 == 1
        pos += len(line)
        if start >= 0 and depth <= 0 and not in_dollars:
            yield start, pos, True
            start, depth = -1, 0
    if start >= 0:
        yield start, pos, False


def _split_lines(body: str) -> list[str]:
    return [body[start:end].strip() for start, end, _ in _blocks(body)]


def _step_markers(body: str) -> list[re.Match[str]]:
    found = sorted([*_STEP_MARKER.finditer(body), *_INLINE_STEP.finditer(body)], key=re.Match.start)
    markers: list[re.Match[str]] = []
    for match in found:
        expected = int(markers[-1][1]) + 1 if markers else 1
        if match.re is _STEP_MARKER or int(match[1]) == expected:
            markers.append(match)
    return markers


def _marked_pieces(body: str, markers: list[re.Match[str]], is_list: bool) -> list[str]:
    pieces = []
    preamble = body[: markers[0].start()].strip()
    if preamble and re.search(r"[\d=]", preamble):
        pieces.append(preamble)
    ends = [m.start() for m in markers[1:]] + [len(body)]
    for marker, end in zip(markers, ends, strict=True):
        chunk = body[marker.end() : end]
        gap = _PARAGRAPH_BREAK.search(chunk) if is_list else None
        if gap:  # what follows a list, unindented, is not part of its last item
            pieces += [chunk[: gap.start()], *_split_lines(chunk[gap.end() :])]
        else:
            pieces.append(chunk)
    return pieces


def split_steps(body: str) -> list[str]:
    """Steps of a solution body, without 'Step k:' or list numbering."""
    markers = _step_markers(body)
    items = list(_LIST_MARKER.finditer(body))
    if markers:
        pieces = _marked_pieces(body, markers, is_list=False)
    elif len(items) >= 2:
        pieces = _marked_pieces(body, items, is_list=True)
    else:
        pieces = _split_lines(body)
    steps = [re.sub(r"\s*\n\s*", "\n", p.strip()) for p in pieces]
    return [s for s in steps if s]


def _answer_region(text: str, found: _Found) -> tuple[int, int]:
    """The lines that hold the answer, widened to whole display blocks (\\[ \\boxed{2} \\])."""
    start, end = text.rfind("\n", 0, found.start) + 1, found.end
    before = list(_blocks(text[:start]))
    if before and not before[-1][2]:
        start = before[-1][0]
    for block_start, block_end, _ in _blocks(text[start:]):
        if start + block_start >= end:
            break
        end = max(end, _line_end(text, start + block_end - 1))
    return start, end


def _only_markers(lead: str) -> bool:
    """Whether what precedes an answer on its line is only markers ('Step 3:', 'Answer:', '\\[')."""
    lead = _LINE_ANSWER.sub("", _STEP_MARKER.sub("", lead, count=1), count=1)
    return not lead.strip().strip("\\[($").strip()


def parse_solution(text: str | None) -> ParsedSolution | ParseFailure:
    """A step-by-step reply → steps and final answer; the answer line stays in the last step."""
    found = _find_or_fail(text)
    if isinstance(found, ParseFailure):
        return found
    text = text or ""  # never None here: _find_or_fail fails on None
    start, end = _answer_region(text, found)
    answer_lines = re.sub(r"\s*\n\s*", "\n", text[start:end].strip())
    steps = split_steps(text[:start])
    standalone = _only_markers(text[start : found.start])
    if standalone and steps and not _STEP_MARKER.match(answer_lines):
        joint = "\n" if "\n" in answer_lines else " "
        steps[-1] = f"{steps[-1]}{joint}{answer_lines}"
    else:
        steps.extend(split_steps(answer_lines))
    if not steps:
        return ParseFailure(reason="no steps", text=text)
    return ParsedSolution(steps=steps, answer=found.answer)


def parse_json_solution(text: str | None) -> ParsedSolution | ParseFailure:
    """A structured-output reply: {"steps": [...], "answer": "..."} (or the recipe's
    {"solutions": [{"solution": "Step 1: … The answer is: X"}]}, first solution)."""
    if text is None or not text.strip():
        return ParseFailure(reason="empty reply", text=text or "")
    try:  # not strict: grammar-guided decoders (xgrammar) let raw newlines into JSON strings
        data = json.loads(text, strict=False)
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
    # Only a leading marker goes: "as in\nStep 1: 2" keeps its text.
    marks = [_STEP_MARKER.match(s) for s in steps]
    cleaned = [
        t for s, m in zip(steps, marks, strict=True) if (t := s[m.end() if m else 0 :].strip())
    ]
    if not cleaned:
        return ParseFailure(reason="no steps", text=text)
    return ParsedSolution(steps=cleaned, answer=final)
