"""Pure. The simulated model's maths: reference solutions, corrupted steps, continuations, truth.

A solution is the reference steps of a GSM8K problem, any of which may be corrupted (a number in it
changed); once a step is wrong, every later step and the final answer are wrong too, unless a
recovery is drawn. The truth needs no bookkeeping: a step is right iff it is the reference step at
its position, so `first_wrong_step` is exact even for solutions the simulator did not write.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from mshep.answers import answers_match
from mshep.errors import DatasetError

ANSWER_MARKER = "The answer is:"
_ANSWER_TAIL = re.compile(r"\s*The answer is:\s*(?P<answer>[^\n]*?)\s*$")
_TOKEN = re.compile(r"\w+|[^\w\s]")
# A whole number: "1,000" or "3.6" is one number, the "6" of "3.6" is not one on its own.
_NUMBER = re.compile(r"(?<![\d.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")


class ReferenceProblem(BaseModel):
    """One dataset row as the simulator knows it: the steps every right solution writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    question: str
    steps: list[str]
    answer: str


@dataclass(frozen=True)
class Draft:
    """New steps (the last one carrying the answer) and the truth of the whole solution."""

    steps: list[str]
    answer: str
    first_wrong: int | None  # 1-based over prefix + new steps; None when all are right


def normalise(text: str) -> str:
    return " ".join(text.split())


def reference_from_row(question: str, answer_text: str) -> ReferenceProblem:
    """GSM8K row → reference: the lines before '####' are the steps, what follows the answer."""
    body, marker, answer = answer_text.rpartition("####")
    if not marker:
        raise ValueError(f"no '####' in the answer of {question[:60]!r}")
    answer = answer.strip().replace(",", "")
    steps = [normalise(line) for line in body.splitlines() if line.strip()]
    # A row without working still needs one step to write and to compare against.
    return ReferenceProblem(
        question=question.strip(), steps=steps or [f"The result is {answer}."], answer=answer
    )


_NEEDS = "GSM8K-style rows: {'question': ..., 'answer': '... #### 72'}"


def _row_reference(row: object, where: str) -> ReferenceProblem:
    """One jsonl row → reference, or a `DatasetError` naming the line and what it lacks."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where} is not a JSON object; the simulator needs {_NEEDS}")
    for column in ("question", "answer"):
        if not isinstance(row.get(column), str):
            problem = "has no column" if column not in row else "has no text in column"
            columns = ", ".join(map(str, row)) or "none"
            raise DatasetError(
                f"{where} {problem} {column!r} (its columns are: {columns}); "
                f"the simulator needs {_NEEDS}"
            )
    try:
        return reference_from_row(row["question"], row["answer"])
    except ValueError:
        shown = row["answer"] if len(row["answer"]) <= 60 else row["answer"][:57] + "..."
        raise DatasetError(
            f"{where}: column 'answer' has no '#### <answer>' line (value {shown!r}); "
            f"the simulator needs {_NEEDS}"
        ) from None


def load_reference(path: str | Path) -> dict[str, ReferenceProblem]:
    """Question (stripped) → reference, from a GSM8K-style jsonl; the first of duplicates wins.
    A file that is missing or not such a jsonl is a `DatasetError` naming the file and line."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"simulator data {path} is a directory: name a GSM8K-style .jsonl file")
    problems: dict[str, ReferenceProblem] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                where = f"{path} line {number}"
                if line.strip():
                    problem = _row_reference(_json(line, where), where)
                    problems.setdefault(problem.question, problem)
    except FileNotFoundError:
        raise DatasetError(f"simulator data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read simulator data {path}: {error}") from None
    if not problems:
        raise DatasetError(f"no problems in simulator data {path}: the file has no rows")
    return problems


def _json(line: str, where: str) -> object:
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{where} is not JSON ({error.msg}, column {error.colno})") from None


def count_tokens(text: str) -> int:
    """A deterministic stand-in tokenizer: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def truncate_tokens(text: str, limit: int) -> str:
    """The text up to and including its `limit`-th token."""
    if limit <= 0:
        return ""
    tokens = list(_TOKEN.finditer(text))
    return text if len(tokens) <= limit else text[: tokens[limit - 1].end()]


def choice_rng(
    seed: int | None, kind: str, question: str, prefix: list[str], index: int
) -> random.Random:
    """Seeded: the same request gives the same text in any process (sha256, not `hash()`)."""
    if seed is None:
        return random.Random()  # seeded from os.urandom
    key = json.dumps([seed, kind, question, prefix, index], ensure_ascii=False)
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _shift(number: str, rng: random.Random) -> str:
    """A different value of the same kind: the number plus or minus 1..9, never negative."""
    value = Decimal(number.replace(",", ""))
    offset = rng.randint(1, 9)
    shifted = value - offset if value - offset >= 0 and rng.random() < 0.5 else value + offset
    return format(shifted, "f")


def corrupt_step(step: str, rng: random.Random) -> str:
    """The step with a number changed everywhere it appears (its result too); always differs."""
    numbers = [match.group() for match in _NUMBER.finditer(step)]
    if not numbers:
        return f"{step} (this miscounts by {rng.randint(1, 9)})"
    old = numbers[-1]  # the step's result: what later steps build on
    new = _shift(old, rng)
    pattern = rf"(?<![\d.,]){re.escape(old)}(?!\d|[.,]\d)"
    return re.sub(pattern, lambda _: new, step)


def wrong_answer(answer: str, rng: random.Random) -> str:
    """An answer that does not match `answer`."""
    try:
        value = Decimal(answer.replace(",", ""))
    except InvalidOperation:
        return f"{answer}+{rng.randint(1, 9)}"
    offset = rng.randint(1, 9)
    return format(
        value - offset if rng.random() < 0.5 and value - offset >= 0 else value + offset, "f"
    )


def _last_number(step: str) -> str | None:
    numbers = _NUMBER.findall(step)
    return numbers[-1].replace(",", "") if numbers else None


def _wrong_final(ref: ReferenceProblem, steps: list[str], rng: random.Random) -> str:
    """The wrong answer: the corrupted last step's result when the reference's last step ends on
    the answer (so the reply stays coherent), else the reference answer shifted."""
    ref_result = _last_number(ref.steps[-1])
    result = _last_number(steps[-1]) if steps else None
    ends_on_answer = ref_result is not None and answers_match(ref_result, ref.answer)
    if ends_on_answer and result is not None and not answers_match(result, ref.answer):
        return result
    return wrong_answer(ref.answer, rng)


def write_continuation(
    ref: ReferenceProblem,
    start: int,
    prefix_wrong: int | None,
    p_wrong: float,
    p_recover: float,
    rng: random.Random,
) -> Draft:
    """Steps `start`+1 onwards after a prefix whose first wrong step is `prefix_wrong`."""
    first_wrong = prefix_wrong
    recovered = first_wrong is not None and rng.random() < p_recover
    steps: list[str] = []
    for position in range(start, len(ref.steps)):
        if first_wrong is None and rng.random() < p_wrong:
            first_wrong = position + 1
        wrong = first_wrong is not None and not recovered
        steps.append(corrupt_step(ref.steps[position], rng) if wrong else ref.steps[position])
    right = first_wrong is None or recovered
    answer = ref.answer if right else _wrong_final(ref, steps, rng)
    # Past the last reference step only the answer is left to state: an empty step body.
    last = f"{steps.pop()} {ANSWER_MARKER} {answer}" if steps else f"{ANSWER_MARKER} {answer}"
    return Draft(steps=[*steps, last], answer=answer, first_wrong=first_wrong)


def split_answer(step: str) -> tuple[str, str | None]:
    """(body, answer) of a step; the answer is None unless it ends with 'The answer is: X'."""
    tail = _ANSWER_TAIL.search(step)
    if tail is None:
        return step, None
    return step[: tail.start()], tail.group("answer")


def step_bodies(steps: list[str]) -> tuple[str, ...]:
    """Steps without answer tails, whitespace normalised: one key for text and JSON replies."""
    return tuple(normalise(split_answer(step)[0]) for step in steps)


def first_wrong_step(ref: ReferenceProblem, steps: list[str]) -> int | None:
    """1-based index of the first step that is not the reference step at its position, or that
    states a final answer other than the reference one; None when every step is right."""
    for position, step in enumerate(steps):
        body, answer = split_answer(step)
        expected = ref.steps[position] if position < len(ref.steps) else ""
        if normalise(body) != expected:
            return position + 1
        if answer is not None and not answers_match(answer, ref.answer):
            return position + 1
    return None
