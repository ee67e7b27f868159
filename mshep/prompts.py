"""Pure. Chat prompts for the generator (golden and candidates) and the completer, and the JSON
schemas for structured output.

The convention is the recipe's: "Step k: …" lines, the last one ending "The answer is: X". Every
piece (system prompt, extra rules, few-shot examples) can be replaced from the run config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Message = dict[str, str]

GENERATOR_SYSTEM = """\
You are a math tutor who solves problems by breaking them down into clear, logical steps.

# For each step:
- Explain the reasoning in one or two sentences
- Show every calculation and its result

# Format requirements:
- Number each step, starting with "Step 1:", one step per line
- End the last step with "The answer is: [result]", where [result] is only the final value
- Write nothing after the answer
"""

COMPLETER_SYSTEM = """\
You are a math tutor. You are given a problem and the first steps of a solution. Continue the \
solution from where it stops until you reach the final answer, building on the given steps even \
if you would have solved it differently.

# Format requirements:
- Number each new step, continuing from the last given step, one step per line
- End the last step with "The answer is: [result]", where [result] is only the final value
- Do not repeat the given steps; write nothing after the answer
"""

RULES = {
    "gsm8k": """\
# Rules:
- Show calculations as in <<5*10=50>>50
- Use * for multiplication, / for division, + for addition, - for subtraction
- The final answer is a number without units
""",
    "math": """\
# Rules:
- Write mathematical expressions in LaTeX between $ signs
- Give the final answer in simplest form, e.g. \\frac{1}{2}, \\sqrt{3}, (1, 2)
""",
}

FEW_SHOTS = {
    "gsm8k": """\
# Example
## Problem
A store sells notebooks for $3 each. If you buy 5 or more, you get a 20% discount. How much \
would you pay for 6 notebooks?
## Solution
Step 1: The regular price of 6 notebooks is 6 * 3 = <<6*3=18>>18 dollars.
Step 2: The discount is 18 * 20 / 100 = <<18*20/100=3.6>>3.6 dollars.
Step 3: The price after the discount is 18 - 3.6 = <<18-3.6=14.4>>14.4 dollars. The answer is: 14.4
""",
    "math": """\
# Example
## Problem
What is the value of $2^5 + 3^3$?
## Solution
Step 1: Compute $2^5 = 32$.
Step 2: Compute $3^3 = 27$.
Step 3: Add them: $32 + 27 = 59$. The answer is: 59
""",
}


class PromptConfig(BaseModel):
    """The prompt of one stage; unset parts take the preset's defaults, "" removes a part."""

    model_config = ConfigDict(extra="forbid")
    preset: Literal["gsm8k", "math"] = Field(
        default="gsm8k", description="Rules and examples to start from: GSM8K or MATH style."
    )
    system_prompt: str | None = Field(default=None, description="Replaces the system prompt.")
    extra_rules: str | None = Field(default=None, description="Replaces the preset's rules.")
    few_shots: str | None = Field(default=None, description="Replaces the preset's examples.")


def _system(default: str, prompts: PromptConfig) -> str:
    base = default if prompts.system_prompt is None else prompts.system_prompt
    rules = RULES[prompts.preset] if prompts.extra_rules is None else prompts.extra_rules
    shots = FEW_SHOTS[prompts.preset] if prompts.few_shots is None else prompts.few_shots
    return "\n".join(part.strip("\n") for part in (base, rules, shots) if part.strip())


def _with_system(system: str, user: str) -> list[Message]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user}]


def render_steps(steps: list[str], start: int = 1) -> str:
    """Steps as the model is asked to write them: one "Step k: …" per line."""
    return "\n".join(f"Step {k}: {step}" for k, step in enumerate(steps, start=start))


def generator_messages(
    question: str, prompts: PromptConfig, structured: bool = False
) -> list[Message]:
    """One solution per request; M candidates come from n-sampling, not from one long reply."""
    system = _system(GENERATOR_SYSTEM, prompts)
    if structured:
        system += '\n\nReply with a JSON object: {"steps": [one string per step], "answer": "X"}.'
    return _with_system(system, f"## Problem\n{question}\n## Solution")


def completer_messages(
    question: str, prefix: list[str], prompts: PromptConfig, structured: bool = False
) -> list[Message]:
    """Continue a solution from its first `len(prefix)` steps."""
    system = _system(COMPLETER_SYSTEM, prompts)
    if structured:
        system += '\n\nReply with a JSON object: {"steps": [the new steps], "answer": "X"}.'
    user = (
        f"## Problem\n{question}\n## Given steps\n{render_steps(prefix)}\n"
        f"## Continue from Step {len(prefix) + 1}"
    )
    return _with_system(system, user)


def _solution_schema(title: str, steps_description: str) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": steps_description,
            },
            "answer": {"type": "string", "description": "The final answer only."},
        },
        "required": ["steps", "answer"],
        "additionalProperties": False,
    }


SOLUTION_SCHEMA = _solution_schema("Solution", "The steps of the solution, in order.")
ROLLOUT_SCHEMA = _solution_schema("Continuation", "The new steps, continuing the given ones.")


def response_format(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style `response_format` for a JSON schema."""
    return {"type": "json_schema", "json_schema": {"name": schema["title"], "schema": schema}}
