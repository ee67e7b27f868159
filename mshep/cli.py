"""Command line: `mshep run`, `mshep check`, `mshep config`, `mshep simulate`.

Bad values are explained before anything runs: the config is validated, the endpoints and token
checked and the dataset's columns read first; errors print as one message, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mshep.config import RunConfig, explain
from mshep.errors import MissingDependency, MshepError

EPILOG = """\
examples:
  mshep demo                                                       # the whole pipeline, offline
  mshep run --dataset openai/gsm8k --limit 50 --model meta-llama/Llama-3.1-8B-Instruct
  mshep run --config run.yaml --base-url http://127.0.0.1:8000/v1 -M 4 -N 4
  mshep simulate --data tests/data/gsm8k/test.jsonl --port 8000   # offline dry-run model
  mshep config > run.yaml                                          # every setting, with defaults
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mshep",
        description="Build Math-Shepherd process-reward-model datasets with Prefect.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="label a dataset (runs the Prefect flow)",
        description="Check the config, endpoints and dataset, then run the Prefect flow; "
        "the run summary is printed as JSON on stdout. Options override --config; --set "
        "overrides both.",
    )
    check = commands.add_parser(
        "check",
        help="validate a config, its endpoints and dataset",
        description="Validate the config, reach the model endpoints and read the dataset, "
        "without generating anything. Exit 0: ready to run.",
    )
    for sub in (run, check):
        _add_config_options(sub)
    commands.add_parser("config", help="print the full default config as YAML")
    demo = commands.add_parser(
        "demo",
        help="the whole pipeline offline: a simulated model on bundled GSM8K questions",
        description="Run the real flow on the first GSM8K test questions bundled with mshep, "
        "against a simulated maths model started in this process: no server, no network, no "
        "GPU. Prints where the dataset is and its label figures.",
    )
    demo.add_argument("--limit", type=int, default=50, metavar="QUESTIONS", help="1 to 200")
    demo.add_argument("-M", type=int, default=4, dest="M", help="candidates per question")
    demo.add_argument("-N", type=int, default=4, dest="N", help="rollouts per probed step")
    demo.add_argument("--output", default="mshep-demo", metavar="PATH", help="output directory")
    simulate = commands.add_parser(
        "simulate",
        help="serve a simulated maths model (OpenAI API) for offline dry runs",
        add_help=False,
    )
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _add_config_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--config", type=Path, metavar="PATH", help="YAML or JSON run config (see `mshep config`)"
    )
    sub.add_argument(
        "--dataset", metavar="SOURCE", help="Hub name, local .jsonl/.parquet/.csv, or s3:// URI"
    )
    sub.add_argument("--split", help="dataset split (Hub datasets)")
    sub.add_argument("--limit", type=int, metavar="ROWS", help="use only the first ROWS rows")
    sub.add_argument("--question-column", metavar="COLUMN", help="column holding the question")
    sub.add_argument(
        "--answer-column", metavar="COLUMN", help="column holding the reference answer"
    )
    sub.add_argument("--model", help="model of the generator and the completer")
    sub.add_argument(
        "--golden-model",
        metavar="MODEL",
        help="strong model for golden solutions (sets golden.source=model)",
    )
    sub.add_argument(
        "--base-url", metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
    )
    sub.add_argument("-M", type=int, dest="M", help="candidate solutions per question")
    sub.add_argument("-N", type=int, dest="N", help="rollouts per step prefix")
    sub.add_argument(
        "--strategy",
        choices=["first_error", "per_step"],
        help="labelling: binary search for the first bad step, or rollouts from every step",
    )
    sub.add_argument("--output", metavar="PATH", help="output directory or s3:// prefix")
    sub.add_argument("--shard-size", type=int, metavar="QUESTIONS", help="questions per task")
    sub.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting, e.g. --set completer.sampling.temperature=0.8 (repeatable)",
    )


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    if not path.exists():
        raise MshepError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise MshepError(f"cannot read config file {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise MshepError(f"{path} is not valid YAML: {_yaml_problem(error)}") from error
    if not isinstance(data, dict):
        raise MshepError(
            f"{path}: the config must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _yaml_problem(error: Exception) -> str:
    """PyYAML's multi-line message as one line: the problem and where (line, column)."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or error}{where}"


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = keys = dotted.split(".")
    if not all(keys):
        raise MshepError(f"{dotted!r} is not a setting name: use dotted keys like generator.M")
    for depth, key in enumerate(parents):
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            section = ".".join(parents[: depth + 1])
            raise MshepError(f"cannot set {dotted}: {section} is {data!r}, not a section")
    data[last] = value


def _parse_set(item: str) -> tuple[str, Any]:
    """`--set KEY=VALUE`: the value is read as YAML (numbers, booleans, lists, null)."""
    import yaml

    key, sep, text = item.partition("=")
    if not sep:
        raise MshepError(f"--set takes KEY=VALUE (e.g. --set generator.M=8), got {item!r}")
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise MshepError(
            f"--set {key.strip()}: {text!r} is not a valid YAML value ({_yaml_problem(error)}); "
            "quote a string that has special characters"
        ) from error


def build_config(args: argparse.Namespace) -> RunConfig:
    """The config file (if any), then the options, then each `--set`, validated as a whole."""
    data = _read_file(args.config) if args.config else {}
    overrides = {
        "dataset.source": args.dataset,
        "dataset.split": args.split,
        "dataset.limit": args.limit,
        "dataset.question_column": args.question_column,
        "dataset.answer_column": args.answer_column,
        "generator.model": args.model,
        "completer.model": args.model,
        "golden.model": args.golden_model,
        "serving.base_url": args.base_url,
        "generator.M": args.M,
        "completer.N": args.N,
        "completer.strategy": args.strategy,
        "output.path": args.output,
        "execution.shard_size": args.shard_size,
    }
    if args.golden_model:
        overrides["golden.source"] = "model"
    for key, value in overrides.items():
        if value is not None:
            _put(data, key, value)
    for item in args.set:
        _put(data, *_parse_set(item))
    return RunConfig.model_validate(data)


def _run(args: argparse.Namespace, execute: bool) -> int:
    """`check`: the checks alone. `run`: the flow, which runs the same checks first."""
    config = build_config(args)
    try:
        from flows.process import (
            TemporaryServer,
            check_api,
            interrupts,
            prepare_environment,
            terminal_progress,
        )

        prepare_environment()  # before Prefect is imported
        server = TemporaryServer.start(config) if execute else None  # boots while we import
        from flows.prm import run_flow
        from flows.secrets import hub_token
    except ImportError as error:  # a core-only install (the engine environment)
        raise MissingDependency(
            f"`mshep {args.command}` needs the flow extra: pip install 'mshep[flow]' "
            f"({error.name} is missing)"
        ) from error
    if not execute:
        from mshep.checks import preflight

        print(preflight(config, hub_token), file=sys.stderr)
        return 0
    check_api()
    # The temporary server lives until the process exits (as Prefect's own would): Prefect's
    # log and event workers flush to it at exit.
    prefect_api = server.use() if server else contextlib.nullcontext()
    with prefect_api, interrupts(config), terminal_progress():
        summary = run_flow(config)
    print("\n".join(summary.get("checks", [])), file=sys.stderr)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 200:
        raise MshepError(f"--limit takes 1 to 200 (the bundled questions), got {args.limit}")
    from flows.process import prepare_environment, terminal_progress

    prepare_environment()  # before Prefect is imported
    from flows.demo import DEMO, mshep_demo

    with terminal_progress():
        summary = mshep_demo(
            dataset=DEMO.dataset.model_copy(update={"limit": args.limit}),
            generator=DEMO.generator.model_copy(update={"M": args.M}),
            completer=DEMO.completer.model_copy(update={"N": args.N}),
            output=DEMO.output.model_copy(update={"path": args.output}),
        )
    labels = ", ".join(f"{k} {v}" for k, v in summary["labels"].items())
    rows = ", ".join(f"{name} {n}" for name, n in summary["rows_out"].items())
    print(f"dataset: {args.output}/ (rows: {rows})")
    print(f"questions labelled: {summary['rows_labelled']} of {summary['rows_in']}; {labels}")
    print(f"summary: {args.output}/summary.json; dataset card: {args.output}/README.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # its own options (and --help) belong to the simulator
        from mshep.testing.simulator import main as simulate

        return simulate(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(RunConfig().model_dump(mode="json"), sort_keys=False), end="")
            return 0
        if args.command == "demo":
            return _demo(args)
        if args.command == "simulate":
            from mshep.testing.simulator import main as simulate

            return simulate(args.rest)
        return _run(args, execute=args.command == "run")
    except ValidationError as error:
        print(explain(error), file=sys.stderr)
        return 2
    except MshepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
