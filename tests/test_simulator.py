"""The simulated maths model, over real loopback HTTP."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mshep.answers import answers_match
from mshep.errors import ConfigError, DatasetError
from mshep.parsing import ParsedSolution, parse_json_solution, parse_solution
from mshep.prompts import (
    ROLLOUT_SCHEMA,
    SOLUTION_SCHEMA,
    PromptConfig,
    completer_messages,
    generator_messages,
    response_format,
)
from mshep.testing import SimulatedMathModel, SimulatorConfig, main, parse_args
from mshep.testing.sim_solutions import (
    corrupt_step,
    first_wrong_step,
    load_reference,
    write_continuation,
)

DATA = Path(__file__).parent / "data" / "gsm8k" / "test.jsonl"
PROMPTS = PromptConfig()
FAST = {"base_latency_s": 0.0, "per_token_s": 0.0, "per_extra_choice_s": 0.0}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedMathModel]:
    with SimulatedMathModel(SimulatorConfig(**FAST), DATA) as server:
        yield server


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def questions(sim: SimulatedMathModel) -> list[str]:
    return list(sim.app.problems)[:20]


def chat(client: httpx.Client, sim: SimulatedMathModel, **body: Any) -> httpx.Response:
    return client.post(f"{sim.base_url}/chat/completions", json={"model": "sim", **body})


def generate(
    client: httpx.Client, sim: SimulatedMathModel, question: str, **body: Any
) -> list[str]:
    reply = chat(client, sim, messages=generator_messages(question, PROMPTS), **body)
    assert reply.status_code == 200, reply.text
    return [choice["message"]["content"] for choice in reply.json()["choices"]]


def parsed(text: str) -> ParsedSolution:
    solution = parse_solution(text)
    assert isinstance(solution, ParsedSolution), solution
    return solution


def test_every_reference_round_trips_through_parse_solution() -> None:
    for ref in load_reference(DATA).values():
        draft = write_continuation(ref, 0, None, 0.0, 0.0, random.Random(0))
        solution = parsed("\n".join(f"Step {k}: {s}" for k, s in enumerate(draft.steps, 1)))
        assert len(solution.steps) == len(ref.steps)
        assert first_wrong_step(ref, solution.steps) is None
        assert answers_match(solution.answer, ref.answer)


def test_corrupting_a_step_always_changes_it() -> None:
    rng = random.Random(1)
    for ref in list(load_reference(DATA).values())[:300]:
        for step in ref.steps:
            assert corrupt_step(step, rng) != step


def test_first_wrong_step_compares_with_the_reference(sim: SimulatedMathModel) -> None:
    ref = sim.reference("  " + next(iter(sim.app.problems)) + "\n")
    right = [*ref.steps[:-1], f"{ref.steps[-1]} The answer is: {ref.answer}"]
    question = ref.question
    assert sim.first_wrong_step(question, right) is None
    assert sim.first_wrong_step(question, right[:1]) is None
    assert sim.first_wrong_step(question, ["something else", *right[1:]]) == 1
    wrong_answer = [*ref.steps[:-1], f"{ref.steps[-1]} The answer is: {ref.answer}1"]
    assert sim.first_wrong_step(question, wrong_answer) == len(ref.steps)
    assert sim.first_wrong_step(question, [*ref.steps, "an extra step"]) == len(ref.steps) + 1


def test_models_lists_the_simulated_model(sim: SimulatedMathModel, client: httpx.Client) -> None:
    models = client.get(f"{sim.base_url}/models").json()
    assert models["data"][0]["id"] == sim.config.model_name


def test_generation_returns_n_parseable_choices(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    reply = chat(client, sim, messages=generator_messages(questions[0], PROMPTS), n=5, seed=3)
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert [c["index"] for c in body["choices"]] == list(range(5))
    assert {c["finish_reason"] for c in body["choices"]} == {"stop"}
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    for choice in body["choices"]:
        assert parsed(choice["message"]["content"]).steps


def test_generation_is_deterministic_given_a_seed(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    first = [generate(client, sim, q, n=4, seed=7) for q in questions]
    assert [generate(client, sim, q, n=4, seed=7) for q in questions] == first
    assert [generate(client, sim, q, n=4, seed=8) for q in questions] != first


def test_truth_agrees_with_generated_solutions(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    outcomes = set()
    for question in questions:
        golden = sim.reference(question).answer
        for text in generate(client, sim, question, n=8, seed=11):
            solution = parsed(text)
            truth = sim.recorded_truth(question, solution.steps)
            assert truth == sim.first_wrong_step(question, solution.steps)
            assert answers_match(solution.answer, golden) == (truth is None)
            outcomes.add(truth is None)
    assert outcomes == {True, False}  # both right and wrong solutions were written


def rollout_answers(
    sim: SimulatedMathModel, client: httpx.Client, question: str, prefix: list[str]
) -> list[str]:
    messages = completer_messages(question, prefix, PROMPTS)
    reply = chat(client, sim, messages=messages, n=40, seed=5)
    return [parsed(c["message"]["content"]).answer for c in reply.json()["choices"]]


def test_completion_from_a_right_prefix_mostly_reaches_the_reference(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    ref = sim.reference(questions[2])
    answers = rollout_answers(sim, client, ref.question, ref.steps[:1])
    assert sum(answers_match(a, ref.answer) for a in answers) >= 0.75 * len(answers)


def test_completion_from_a_wrong_prefix_mostly_does_not(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    ref = sim.reference(questions[2])
    prefix = [corrupt_step(ref.steps[0], random.Random(0))]
    answers = rollout_answers(sim, client, ref.question, prefix)
    assert sum(answers_match(a, ref.answer) for a in answers) <= 0.25 * len(answers)


def test_completion_writes_only_the_new_steps(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    ref = sim.reference(questions[2])
    assert len(ref.steps) >= 3
    messages = completer_messages(ref.question, ref.steps[:2], PROMPTS)
    text = chat(client, sim, messages=messages, seed=1).json()["choices"][0]["message"]["content"]
    assert text.startswith("Step 3: ")
    assert "Step 2:" not in text
    assert len(parsed(text).steps) == len(ref.steps) - 2


def test_completion_past_the_last_step_states_the_answer(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    ref = sim.reference(questions[0])
    messages = completer_messages(ref.question, ref.steps, PROMPTS)
    text = chat(client, sim, messages=messages, seed=1).json()["choices"][0]["message"]["content"]
    assert text == f"Step {len(ref.steps) + 1}: The answer is: {ref.answer}"
    assert sim.first_wrong_step(ref.question, [*ref.steps, *parsed(text).steps]) is None


def test_max_tokens_cuts_the_reply_with_finish_reason_length(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    messages = generator_messages(questions[0], PROMPTS)
    body = chat(client, sim, messages=messages, max_tokens=5, seed=1).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"].startswith("Step 1: ")


def test_stop_string_cuts_the_reply(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    messages = generator_messages(questions[0], PROMPTS)
    body = chat(client, sim, messages=messages, stop=["\nStep 2"], seed=1).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"].startswith("Step 1: ")
    assert "\n" not in choice["message"]["content"]


def test_json_response_format_gives_valid_json(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    question = questions[1]
    messages = generator_messages(question, PROMPTS, structured=True)
    fmt = response_format(SOLUTION_SCHEMA)
    reply = chat(client, sim, messages=messages, response_format=fmt, n=4, seed=2)
    for choice in reply.json()["choices"]:
        data = json.loads(choice["message"]["content"])
        assert set(data) == {"steps", "answer"}
        solution = parse_json_solution(choice["message"]["content"])
        assert isinstance(solution, ParsedSolution)
        truth = sim.recorded_truth(question, solution.steps)
        assert truth == sim.first_wrong_step(question, solution.steps)
    ref = sim.reference(question)
    messages = completer_messages(question, ref.steps[:1], PROMPTS, structured=True)
    fmt = response_format(ROLLOUT_SCHEMA)
    reply = chat(client, sim, messages=messages, response_format=fmt, seed=2)
    assert isinstance(
        parse_json_solution(reply.json()["choices"][0]["message"]["content"]), ParsedSolution
    )


def test_unknown_question_is_an_openai_style_400(
    sim: SimulatedMathModel, client: httpx.Client
) -> None:
    reply = chat(client, sim, messages=generator_messages("What is 1 + 1?", PROMPTS))
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    reply = chat(client, sim, messages=[{"role": "user", "content": "hello"}])
    assert reply.status_code == 400


def test_truth_endpoint(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    ref = sim.reference(questions[0])
    query = {"question": ref.question, "steps": ["wrong", *ref.steps[1:]]}
    assert client.post(f"{sim.url}/truth", json=query).json() == {"first_wrong_step": 1}


def test_stats_count_requests_and_tokens(
    sim: SimulatedMathModel, client: httpx.Client, questions: list[str]
) -> None:
    sim.reset_stats()
    usage = [
        chat(client, sim, messages=generator_messages(q, PROMPTS), n=2).json()["usage"]
        for q in questions[:3]
    ]
    messages = completer_messages(questions[0], ["x"], PROMPTS)
    usage.append(chat(client, sim, messages=messages, n=3).json()["usage"])
    chat(client, sim, messages=[{"role": "user", "content": "hello"}])
    stats = sim.stats()
    assert stats.requests == 5
    assert stats.by_kind == {"generate": 3, "complete": 1, "unknown": 1}
    assert stats.choices == 9
    assert stats.prompt_tokens == sum(u["prompt_tokens"] for u in usage)
    assert stats.completion_tokens == sum(u["completion_tokens"] for u in usage)
    served = client.get(f"{sim.url}/stats").json()
    assert served["completion_tokens"] == stats.completion_tokens


def test_latency_model_holds_slots(questions: list[str]) -> None:
    config = SimulatorConfig(slots=2, base_latency_s=0.05, per_token_s=0.0, per_extra_choice_s=0.0)
    with SimulatedMathModel(config, DATA) as sim, httpx.Client(timeout=10) as http:

        def one(question: str) -> None:
            assert (
                chat(http, sim, messages=generator_messages(question, PROMPTS)).status_code == 200
            )

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=(q,)) for q in questions[:8]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        stats = sim.stats()
    assert stats.busy_slot_seconds == pytest.approx(8 * 0.05)
    assert stats.ideal_time_s == pytest.approx(0.2)
    assert stats.max_in_flight == 2
    assert elapsed >= 0.19  # 8 requests of 50 ms through 2 slots


def statuses(config: SimulatorConfig, requests: int, question: str) -> list[int]:
    with SimulatedMathModel(config, DATA) as sim, httpx.Client(timeout=10) as http:
        messages = generator_messages(question, PROMPTS)
        return [chat(http, sim, messages=messages).status_code for _ in range(requests)]


def test_fault_500_rate_is_roughly_the_configured_one(questions: list[str]) -> None:
    config = SimulatorConfig(p_500=0.3, fault_seed=4, **FAST)
    codes = statuses(config, 200, questions[0])
    assert 0.2 <= codes.count(500) / len(codes) <= 0.4
    assert set(codes) == {200, 500}
    assert statuses(config, 200, questions[0]) == codes  # the fault seed makes them reproducible


def test_fault_500(questions: list[str]) -> None:
    codes = statuses(SimulatorConfig(p_500=1.0, **FAST), 3, questions[0])
    assert codes == [500, 500, 500]


def test_fault_429_carries_retry_after(questions: list[str]) -> None:
    with SimulatedMathModel(SimulatorConfig(p_429=1.0, **FAST), DATA) as sim:
        reply = httpx.post(
            f"{sim.base_url}/chat/completions",
            json={"model": "sim", "messages": generator_messages(questions[0], PROMPTS)},
        )
        assert sim.stats().faults["429"] == 1
    assert reply.status_code == 429
    assert reply.headers["Retry-After"] == "1"
    assert reply.json()["error"]["type"] == "rate_limit_error"


def test_fault_malformed_is_a_200_that_is_not_json(questions: list[str]) -> None:
    with SimulatedMathModel(SimulatorConfig(p_malformed=1.0, **FAST), DATA) as sim:
        reply = httpx.post(
            f"{sim.base_url}/chat/completions",
            json={"model": "sim", "messages": generator_messages(questions[0], PROMPTS)},
        )
    assert reply.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply.content)


def test_fault_timeout_stalls_and_stop_still_returns(questions: list[str]) -> None:
    config = SimulatorConfig(p_timeout=1.0, timeout_sleep_s=30, **FAST)
    sim = SimulatedMathModel(config, DATA)
    sim.start()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{sim.base_url}/chat/completions",
            json={"model": "sim", "messages": generator_messages(questions[0], PROMPTS)},
            timeout=0.3,
        )
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2
    assert sim.stats().faults["timeout"] == 1


def test_parse_args_builds_the_config() -> None:
    config, data = parse_args(["--data", str(DATA), "--p-wrong-step", "0.3", "--slots", "8"])
    assert (config.p_wrong_step, config.slots, config.port, data) == (0.3, 8, 8000, DATA)
    config, _ = parse_args(["--data", str(DATA), "--no-record-truth", "--p-429", "0.1"])
    assert (config.record_truth, config.p_429) == (False, 0.1)


def test_main_serves_until_interrupted() -> None:
    code = "from mshep.testing.simulator import main; raise SystemExit(main())"
    command = [sys.executable, "-c", code, "--data", str(DATA), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().split(" at ")[-1].strip()
        assert httpx.get(f"{base_url}/models", timeout=5).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert '"requests": 0' in process.stdout.read()
    finally:
        process.kill()


# --- bad data, settings and ports are one message, not a traceback (issue 14) ----------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"problem": "q", "solution": "#### 1"}\n', "line 1 has no column 'question'"),
        ('{"question": "q", "solution": "#### 1"}\n', "line 1 has no column 'answer'"),
        ('{"question": "q", "answer": 7}\n', "line 1 has no text in column 'answer'"),
        ('{"question": "q", "answer": "#### 1"}\n{oops\n', "line 2 is not JSON"),
        ('["q", "#### 1"]\n', "line 1 is not a JSON object"),
        ('{"question": "q", "answer": "\\\\boxed{1}"}\n', "line 1: column 'answer' has no '####"),
        ("\n\n", "no problems in simulator data"),
    ],
)
def test_data_the_simulator_cannot_use_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    with pytest.raises(DatasetError) as error:
        load_reference(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_simulator_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"simulator data file not found: {tmp_path}/x.jsonl"):
        SimulatedMathModel(None, tmp_path / "x.jsonl")
    with pytest.raises(DatasetError, match="is a directory"):
        SimulatedMathModel(None, tmp_path)


def test_a_port_in_use_is_named() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sim = SimulatedMathModel(SimulatorConfig(port=port), DATA)
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is in use"):
            sim.start()
    sim.stop()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["--data", "missing.jsonl"], 1, "error: simulator data file not found: missing.jsonl"),
        (["--data", str(DATA), "--p-500", "2"], 2, "error: --p-500: Input should be less than"),
        (
            ["--data", str(DATA), "--p-500", "0.6", "--p-429", "0.6"],
            2,
            "must not exceed 1",
        ),
    ],
)
def test_main_says_what_is_wrong_in_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
