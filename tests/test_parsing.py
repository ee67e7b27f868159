"""Readers of model replies and dataset answers: steps, final answers, and why they failed."""

from __future__ import annotations

import json

import pytest

from mshep.parsing import (
    ParsedSolution,
    ParseFailure,
    clean_answer,
    extract_final_answer,
    parse_json_solution,
    parse_solution,
    split_steps,
)
from mshep.references import parse_reference_answer


def parsed(text: str | None) -> ParsedSolution:
    result = parse_solution(text)
    assert isinstance(result, ParsedSolution), result
    return result


def failure(result: object) -> ParseFailure:
    assert isinstance(result, ParseFailure), result
    assert not result
    assert result.reason
    return result


# ---- parse_solution: step formats ----------------------------------------------------------

STEP_FORMATS = {
    "step k": "Step 1: Add 2 and 3 to get 5.\nStep 2: Double it to get 10.\nThe answer is: 10",
    "step k inline": "Step 1: Add 2 and 3 to get 5. Step 2: Double it to get 10. The answer is: 10",
    "markdown": (
        "**Step 1:** Add 2 and 3 to get 5.\n\n**Step 2:** Double it to get 10.\n\nThe answer is: 10"
    ),
    "numbered 1.": "1. Add 2 and 3 to get 5.\n2. Double it to get 10.\nThe answer is: 10",
    "numbered 2)": "1) Add 2 and 3 to get 5.\n2) Double it to get 10.\nThe answer is: 10",
    "plain lines": "Add 2 and 3 to get 5.\nDouble it to get 10.\nThe answer is: 10",
    "blank lines": (
        "Step 1: Add 2 and 3 to get 5.\n\n\nStep 2: Double it to get 10.\n\nThe answer is: 10"
    ),
    "plain with blank lines": "Add 2 and 3 to get 5.\n\nDouble it to get 10.\n\nThe answer is: 10",
    "preamble without maths": (
        "Let's solve this step by step.\nStep 1: Add 2 and 3 to get 5.\n"
        "Step 2: Double it to get 10.\nThe answer is: 10"
    ),
}


@pytest.mark.parametrize("text", STEP_FORMATS.values(), ids=STEP_FORMATS.keys())
def test_step_formats(text: str) -> None:
    result = parsed(text)
    assert result.steps == ["Add 2 and 3 to get 5.", "Double it to get 10. The answer is: 10"]
    assert result.answer == "10"


def test_step_prefix_removed_from_every_step() -> None:
    result = parsed("Step 1: 2+3=5\nStep 2: 5*2=10\nStep 3: 10-1=9\nThe answer is: 9")
    assert result.steps == ["2+3=5", "5*2=10", "10-1=9 The answer is: 9"]
    assert not any("Step" in step for step in result.steps)


def test_answer_on_the_last_step_line() -> None:
    result = parsed("Step 1: 3+4=7\nStep 2: 9*2=18 The answer is: 18")
    assert result.steps == ["3+4=7", "9*2=18 The answer is: 18"]
    assert result.answer == "18"


def test_answer_line_is_appended_to_the_last_step() -> None:
    """The recipe/Math-Shepherd convention: the answer stays in the last step, not a new one."""
    result = parsed("Step 1: 16 - 3 - 4 = 9\nStep 2: 9 * 2 = 18\nThe answer is: 18")
    assert len(result.steps) == 2
    assert result.steps[-1].endswith("The answer is: 18")


def test_dollar_display_block_stays_in_one_step() -> None:
    text = (
        "First we add the fractions:\n$$\n\\frac{1}{2} + \\frac{1}{4}\n= \\frac{3}{4}\n$$\n"
        "So the sum is 3/4.\nThe answer is: \\frac{3}{4}"
    )
    result = parsed(text)
    block = [step for step in result.steps if "$$" in step]
    assert len(block) == 1
    assert block[0] == "$$\n\\frac{1}{2} + \\frac{1}{4}\n= \\frac{3}{4}\n$$"
    assert result.answer == "\\frac{3}{4}"


def test_bracket_display_block_stays_in_one_step() -> None:
    result = parsed("We compute\n\\[\n1 + 2\n= 3\n\\]\nThus 3.\nThe answer is: 3")
    assert "\\[\n1 + 2\n= 3\n\\]" in result.steps
    assert result.answer == "3"


def test_environment_stays_in_one_step() -> None:
    text = "We solve\n\\begin{align}\nx + 1 &= 3\\\\\nx &= 2\n\\end{align}\nThe answer is: 2"
    result = parsed(text)
    block = "\\begin{align}\nx + 1 &= 3\\\\\nx &= 2\n\\end{align}"
    assert result.steps == ["We solve", f"{block} The answer is: 2"]
    assert result.answer == "2"


def test_step_with_display_block_inside() -> None:
    text = "Step 1: We have\n$$\nx = 1 + 1\n$$\nStep 2: So x is 2.\nThe answer is: 2"
    result = parsed(text)
    assert result.steps == ["We have\n$$\nx = 1 + 1\n$$", "So x is 2. The answer is: 2"]


# ---- parse_solution: final answers --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (
            "Step 1: Half of 1 is 1/2.\nStep 2: So the answer is \\boxed{\\frac{1}{2}}.",
            r"\frac{1}{2}",
        ),
        ("Half of 1 is 1/2.\nSo we get $\\boxed{\\frac{1}{2}}$.", r"\frac{1}{2}"),
        ("x = 2.\nThe final answer is $\\boxed{2}$. I hope it is correct.", "2"),
        ("We get {1, 2}.\nThe answer is: \\boxed{\\{1, \\frac{2}{3}\\}}", r"\{1, \frac{2}{3}\}"),
        ("She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
        ("Natalia sold 48/2 = 24 clips.\nShe sold 48+24 = 72 clips.\n#### 72", "72"),
        ("She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nA: 18", "18"),
        ("Step 1: 9 * 2 = 18.\nThe answer is: 18. I hope this helps!", "18"),
        ("Step 1: 9 * 2 = 18.\nThe answer is: 18\nI hope this helps!\nLet me know.", "18"),
        ("Step 1: 9 * 2 = 18.\nThe answer is 18.", "18"),
        ("Step 1: 500 + 500 = 1000.\nThe answer is: 1,000.", "1,000"),
        ("Step 1: 9 * 2 = 18.\nThe answer is: $18", "$18"),
        ("Step 1: Half.\nThe answer is: $\\frac{1}{2}$", r"\frac{1}{2}"),
        ("Step 1: 9 * 2 = 18.\n**Final Answer:** 18", "18"),
        ("Step 1: The answer is: 5 is wrong.\nStep 2: 9 * 2 = 18.\nThe answer is: 18", "18"),
    ],
)
def test_final_answer(text: str, answer: str) -> None:
    assert parsed(text).answer == answer
    assert extract_final_answer(text) == answer


def test_text_after_the_answer_is_dropped() -> None:
    result = parsed("Step 1: 9 * 2 = 18.\nThe answer is: 18\nI hope this helps!\nStep 2: 1 + 1 = 2")
    assert result.steps == ["9 * 2 = 18. The answer is: 18"]
    assert result.answer == "18"
    assert not any("hope" in step for step in result.steps)


def test_gsm8k_marker_line_in_last_step() -> None:
    result = parsed("She has 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nA: 18")
    assert result.steps == ["She has 16 - 3 - 4 = 9 eggs.", "She makes 9 * 2 = $18. A: 18"]


# ---- parse_solution: failures -------------------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "   ", "\n\n \t\n"])
def test_empty_reply(text: str | None) -> None:
    assert failure(parse_solution(text)).reason == "empty reply"
    assert failure(extract_final_answer(text)).reason == "empty reply"


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: 3+4=7\nStep 2: 9*2=18",
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmers",
        "The answer is:",
        "Step 1: x = 2\nSo \\boxed{}",
        "Step 1: x = 2\nThe answer is: \\boxed{ }",
    ],
)
def test_no_final_answer(text: str) -> None:
    result = failure(parse_solution(text))
    assert result.reason == "no final answer"
    assert result.text == text
    assert failure(extract_final_answer(text)).reason == "no final answer"


# ---- parse_json_solution -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "steps", "answer"),
    [
        ({"steps": ["Step 1: 2+3=5", "Step 2: 5*2=10"], "answer": "10"}, ["2+3=5", "5*2=10"], "10"),
        ({"steps": ["2+3=5", "5*2=10"], "answer": 10}, ["2+3=5", "5*2=10"], "10"),
        ({"steps": ["7/2 = 3.5"], "answer": 3.5}, ["7/2 = 3.5"], "3.5"),
        ({"steps": ["half", ""], "answer": "\\boxed{\\frac{1}{2}}"}, ["half"], r"\frac{1}{2}"),
        (
            {"solutions": [{"solution": "Step 1: 1+2=3 The answer is: 3"}]},
            ["1+2=3 The answer is: 3"],
            "3",
        ),
        (
            {"solutions": [{"solution": "Step 1: 1+2=3\nThe answer is: 3"}, {"solution": "x"}]},
            ["1+2=3 The answer is: 3"],
            "3",
        ),
        (
            {"solution": "Step 1: 1+2=3\nStep 2: 3*2=6\nThe answer is: 6"},
            ["1+2=3", "3*2=6 The answer is: 6"],
            "6",
        ),
    ],
)
def test_json_solution(data: dict[str, object], steps: list[str], answer: str) -> None:
    result = parse_json_solution(json.dumps(data))
    assert result == ParsedSolution(steps=steps, answer=answer)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"steps": ["a"], "answer": ', "invalid JSON: Expecting value"),
        ("not json", "invalid JSON: Expecting value"),
        ('{"steps": ["a"], "answer": "3",}', "invalid JSON: Expecting property name"),
        ("[1, 2]", "JSON is not an object"),
        ('"Step 1: 3"', "JSON is not an object"),
    ],
)
def test_json_invalid(text: str, reason: str) -> None:
    result = failure(parse_json_solution(text))
    assert result.reason.startswith(reason)
    assert result.text == text


@pytest.mark.parametrize(
    "data",
    [
        {"steps": "Step 1: 2+3=5", "answer": "5"},
        {"steps": [1, 2], "answer": "3"},
        {"steps": ["a"], "answer": None},
        {"steps": ["a"], "answer": ""},
        {"steps": ["a"], "answer": "."},
        {"steps": ["a"], "answer": ["3"]},
        {"steps": ["a"], "answer": True},
        {"steps": ["a"]},
        {"answer": "3"},
        {"steps": [], "answer": "3"},
        {"steps": ["", "Step 1:"], "answer": "3"},
        {"solutions": []},
        {"solutions": "Step 1: 1+2=3 The answer is: 3"},
        {"solutions": [{"solution": 5}]},
        {"solutions": [{"solution": ""}]},
        {"solutions": [{"solution": "Step 1: 1+2=3, no answer"}]},
    ],
)
def test_json_wrong_shape(data: object) -> None:
    failure(parse_json_solution(json.dumps(data)))


@pytest.mark.parametrize("text", [None, "", "  "])
def test_json_empty(text: str | None) -> None:
    assert failure(parse_json_solution(text)).reason == "empty reply"


# ---- parse_reference_answer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("It costs 500 + 500 = $<<500+500=1000>>1000.\n#### 1,000", "1,000"),
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("So she lost 3 - 6 = -3.\n#### -3", "-3"),
        ("The ratio is $\\frac{3}{4}$, so the answer is $\\boxed{\\frac{3}{4}}$.", r"\frac{3}{4}"),
        ("Hence \\boxed{\\left(1, \\frac{1}{2}\\right)}.", r"\left(1, \frac{1}{2}\right)"),
        ("72", "72"),
        ("  72  ", "72"),
        (r"\frac{3}{4}", r"\frac{3}{4}"),
        ("Yes", "Yes"),
        ("The answer is 5", "5"),
    ],
)
def test_reference_answer(text: str, answer: str) -> None:
    assert parse_reference_answer(text) == answer


def test_reference_answer_int() -> None:
    assert parse_reference_answer(72) == "72"  # type: ignore[arg-type]  # datasets hold ints


def test_reference_answer_formats() -> None:
    assert parse_reference_answer("x\n#### 3", "gsm8k") == "3"
    assert parse_reference_answer("so \\boxed{3}", "boxed") == "3"
    assert parse_reference_answer(" 7 ", "plain") == "7"
    failure(parse_reference_answer("so \\boxed{3}", "gsm8k"))
    failure(parse_reference_answer("x\n#### 3", "boxed"))


@pytest.mark.parametrize(
    "text",
    [
        "This is a long explanation without any final answer: we just keep going on and on, "
        "and then on and on and on some more, with prose all the way.",
        "First line of prose.\nSecond line of prose, no answer.",
        "####",
        "#### ",
        "so \\boxed{}",
        ".",
    ],
)
def test_reference_answer_missing(text: str) -> None:
    result = failure(parse_reference_answer(text))
    assert result.reason.startswith("no final answer in the reference")


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_reference_answer_empty(text: str | None) -> None:
    assert failure(parse_reference_answer(text)).reason == "empty reference answer"


# ---- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "answer"),
    [
        ("18", "18"),
        (" : 18", "18"),
        ("18.", "18"),
        ("18. I hope this helps!", "18"),
        ("18\nmore text", "18"),
        ("**18**", "18"),
        ("$18", "$18"),
        ("$\\frac12$", r"\frac12"),
        ("\\boxed{\\frac{1}{2}} dollars", r"\frac{1}{2}"),
        ("3.5 hours.", "3.5 hours"),
    ],
)
def test_clean_answer(raw: str, answer: str) -> None:
    assert clean_answer(raw) == answer


@pytest.mark.parametrize(
    ("body", "steps"),
    [
        ("Step 1: a = 1\nStep 2: b = 2", ["a = 1", "b = 2"]),
        ("a = 1\n\nb = 2\n", ["a = 1", "b = 2"]),
        ("1. a = 1\n2) b = 2", ["a = 1", "b = 2"]),
        ("Step 1: a =\n  1\nStep 2: b = 2", ["a =\n1", "b = 2"]),
        ("We know x = 3.\nStep 1: a = x\nStep 2: b = 2", ["We know x = 3.", "a = x", "b = 2"]),
        ("", []),
        ("\n  \n", []),
    ],
)
def test_split_steps(body: str, steps: list[str]) -> None:
    assert split_steps(body) == steps


# ---- issue 13: real model output ------------------------------------------------------------


def test_b4_markdown_heading_is_not_the_gsm8k_marker() -> None:
    text = "#### Part 1\nThe area is 2.\n\nSo the total is \\boxed{30}."
    assert extract_final_answer(text) == "30"
    assert parsed(text).answer == "30"


@pytest.mark.parametrize(
    "heading",
    ["#### Step 2: 3 + 4 = 7", "#### Conclusion", "#### Solution", "#### 1. Compute the area"],
)
def test_b4_relatives_headings_give_no_answer(heading: str) -> None:
    """A heading alone is never a final answer, whatever follows the four hashes."""
    failure(extract_final_answer(f"{heading}\nWe add 3 and 4."))


def test_b4_relative_final_answer_heading_announces_the_next_line() -> None:
    assert extract_final_answer("We add 3 and 4.\n#### Final Answer\n7") == "7"
    assert extract_final_answer("We add 3 and 4.\n**Final Answer**\n\n$7$") == "7"


def test_b4_relative_five_hashes_are_a_heading() -> None:
    failure(extract_final_answer("##### 72\nWe add 3 and 4."))


def test_b5_answer_phrase_in_prose_loses_to_a_later_boxed_answer() -> None:
    text = "Typically the answer is expected to be an integer.\n\n\\[\\boxed{7}\\]"
    assert extract_final_answer(text) == "7"
    assert parsed(text).answer == "7"


def test_b5_relative_answer_phrase_in_prose_after_the_boxed_answer() -> None:
    """The mirror image of B5: prose that mentions "the answer is" after the boxed answer."""
    text = "So x = 7.\n\\[\\boxed{7}\\]\nNote that the answer is consistent with the constraints."
    assert extract_final_answer(text) == "7"


def test_b5_relative_later_answer_line_wins_over_earlier_boxed() -> None:
    text = "First guess: \\boxed{5}.\nThat is wrong: 2 + 4 = 6.\nThe answer is: 6"
    assert extract_final_answer(text) == "6"


@pytest.mark.parametrize(
    "text",
    [
        "Step 1: 2 + 3 = 5.\nFinal Answer: The final answer is\n$\\boxed{5}$",
        "Step 1: 2 + 3 = 5.\nFinal Answer: The final answer is\n5",
        "Step 1: 2 + 3 = 5.\nFinal Answer: The final answer is\n\n5",
        "Step 1: 2 + 3 = 5.\n**Final Answer:**\n\\[ \\boxed{5} \\]",
        "Step 1: 2 + 3 = 5.\nThe answer is:\n$$5$$",
    ],
)
def test_b14_answer_on_the_line_after_its_marker(text: str) -> None:
    assert extract_final_answer(text) == "5"
    result = parsed(text)
    assert result.answer == "5"
    assert len(result.steps) == 1  # the answer lines stay in the last step
    assert result.steps[0].startswith("2 + 3 = 5.\n")


def test_b14_relative_marker_with_nothing_after_it_is_no_answer() -> None:
    failure(extract_final_answer("Step 1: 2 + 3 = 5.\nFinal Answer: The final answer is"))


def test_b6_list_item_ends_at_a_paragraph_break() -> None:
    text = (
        "We use two facts:\n1. a = 2\n2. b = 3\n\nNow add them: a + b = 5.\n\n"
        "Then double it: 2 * 5 = 10.\n\nThe answer is: 10"
    )
    assert parsed(text).steps == [
        "a = 2",
        "b = 3",
        "Now add them: a + b = 5.",
        "Then double it: 2 * 5 = 10. The answer is: 10",
    ]


def test_b6_relative_indented_continuation_stays_in_its_item() -> None:
    body = "1. a = 2\n\n   so a is even.\n2. b = 3\n\nThen a + b = 5."
    assert split_steps(body) == ["a = 2\nso a is even.", "b = 3", "Then a + b = 5."]


def test_b7_step_marker_mid_sentence_is_text() -> None:
    text = "Step 1: x = 2.\nStep 2: Using the value from Step 1. we get y = 4.\nThe answer is: 4"
    assert parsed(text).steps == [
        "x = 2.",
        "Using the value from Step 1. we get y = 4. The answer is: 4",
    ]


@pytest.mark.parametrize(
    ("body", "steps"),
    [
        (
            "Step 1: a = 1\nStep 2: From step 6: b = a + 1 = 2",
            ["a = 1", "From step 6: b = a + 1 = 2"],
        ),
        ("Step 1: a = 1\nStep 2: as in Step 1: b = 2", ["a = 1", "as in Step 1: b = 2"]),
        ("Step 1: a = 1. Step 3: b = 2", ["a = 1. Step 3: b = 2"]),  # out of sequence
        ("Step 1: a = 1. step 2: b = 2", ["a = 1. step 2: b = 2"]),  # not a sentence start
        ("a = 1, see 2. below\nb = 2", ["a = 1, see 2. below", "b = 2"]),
    ],
)
def test_b7_relatives_markers_only_where_a_step_can_start(body: str, steps: list[str]) -> None:
    assert split_steps(body) == steps


def test_b7_relative_json_steps_lose_only_a_leading_marker() -> None:
    data = {"steps": ["Step 1: a = 1", "b = a + 1, as in\nStep 1: 2"], "answer": "2"}
    result = parse_json_solution(json.dumps(data))
    assert isinstance(result, ParsedSolution)
    assert result.steps == ["a = 1", "b = a + 1, as in\nStep 1: 2"]


def test_b8_display_block_around_the_boxed_answer_stays_whole() -> None:
    """A display block that holds only the answer is the answer line: it joins the last step."""
    result = parsed("x = 2\n\\[\n\\boxed{2}\n\\]")
    assert result.answer == "2"
    assert result.steps == ["x = 2\n\\[\n\\boxed{2}\n\\]"]


def test_b8_relative_dollar_block_around_the_boxed_answer() -> None:
    result = parsed("x = 2\n$$\n\\boxed{2}\n$$")
    assert result.steps == ["x = 2\n$$\n\\boxed{2}\n$$"]


def test_b9_gsm8k_marker_after_a_step_marker() -> None:
    result = parsed("Step 1: 3 + 4 = 7\nStep 2: #### 7")
    assert result.answer == "7"
    assert result.steps == ["3 + 4 = 7", "#### 7"]
    assert extract_final_answer("Step 1: 3 + 4 = 7\n**Step 2:** #### 7") == "7"


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (
            "Step 1: x\nThe answer is:\n\\begin{pmatrix}\n1 \\\\\n2\n\\end{pmatrix}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
        ),
        ("Step 1: x\nThe answer is:\n\\[\n\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}\n\\]", None),
        ("So x = 2.\n\n**Final Answer**\n\\[\n\\boxed{2}\n\\]", "2"),
    ],
)
def test_b14_relatives_answer_block_after_its_marker(text: str, answer: str | None) -> None:
    """A marker followed by a display block reads the whole block, never its first line."""
    expected = answer or "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"
    assert extract_final_answer(text) == expected
    result = parsed(text)
    assert result.answer == expected
    assert result.steps[-1].endswith(text.rsplit("\n", 1)[-1])  # the block closes the last step


def test_answer_heading_and_phrase_form_one_answer_region() -> None:
    text = "Step 1: 1 + 2 = 3\n\n### Final Answer\nThe final answer is $\\boxed{3}$."
    assert parsed(text).steps == ["1 + 2 = 3\n### Final Answer\nThe final answer is $\\boxed{3}$."]


def test_b8_relative_row_spacing_is_not_a_display_opener() -> None:
    """`\\\\[4pt]` is a row break with spacing: counting it as `\\[` swallowed every later line."""
    block = "\\begin{align}\nx &= 1 \\\\[4pt]\ny &= 2\n\\end{align}"
    result = parsed(f"We solve\n{block}\nSo x + y = 3.\nThe answer is: 3")
    assert result.steps == ["We solve", block, "So x + y = 3. The answer is: 3"]


def test_json_with_raw_newlines_in_strings_is_read() -> None:
    # xgrammar (vLLM's structured output) lets raw control characters into JSON strings.
    text = '{"steps": ["Half of 2 is\n1", "2 + 1 = 3"], "answer": "3"}'
    parsed = parse_json_solution(text)
    assert isinstance(parsed, ParsedSolution)
    assert parsed.steps == ["Half of 2 is\n1", "2 + 1 = 3"] and parsed.answer == "3"
