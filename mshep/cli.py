"""Command line: `mshep run`, `mshep check`, `mshep config`, `mshep simulate`.

Bad values are explained before anything runs: the config is validated, the endpoints and token
checked and the dataset's columns read first; errors print as one message, not a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mshep.config import RunConfig
from mshep.errors import MshepError

EPILOG = """\
examples:
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
    run = commands.add_parser("run", help="label a dataset (runs the Prefect flow)")
    check = commands.add_parser("check", help="validate a config, its endpoints and dataset")
    for sub in (run, check):
        _add_config_options(sub)
    commands.add_parser("config", help="print the full default config as YAML")
    simulate = commands.add_parser(
        "simulate",
        help="serve a simulated maths model (OpenAI API) for offline dry runs",
        add_help=False,
    )
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _add_config_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--config", type=Path, help="YAML or JSON run config (see `mshep config`)")
    sub.add_argument("--dataset", help="Hub name, local .jsonl/.parquet/.csv, or s3:// URI")
    sub.add_argument("--split", help="dataset split (Hub datasets)")
    sub.add_argument("--limit", type=int, help="use only the first LIMIT rows")
    sub.add_argument("--question-column", help="column holding the question")
    sub.add_argument("--answer-column", help="column holding the reference answer")
    sub.add_argument("--model", help="model of the generator and the completer")
    sub.add_argument(
        "--golden-model", help="strong model for golden solutions (sets golden.source=model)"
    )
    sub.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    sub.add_argument("-M", type=int, dest="M", help="candidate solutions per question")
    sub.add_argument("-N", type=int, dest="N", help="rollouts per step prefix")
    sub.add_argument("--output", help="output directory or s3:// prefix")
    sub.add_argument("--shard-size", type=int, help="questions per task")
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
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise MshepError(
            f"{path}: the config must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[last] = value


def build_config(args: argparse.Namespace) -> RunConfig:
    import yaml

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
        "backend.base_url": args.base_url,
        "generator.M": args.M,
        "completer.N": args.N,
        "output.path": args.output,
        "execution.shard_size": args.shard_size,
    }
    if args.golden_model:
        overrides["golden.source"] = "model"
    for key, value in overrides.items():
        if value is not None:
            _put(data, key, value)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise MshepError(f"--set takes KEY=VALUE, got {item!r}")
        _put(data, key.strip(), yaml.safe_load(value))
    return RunConfig.model_validate(data)


def explain(error: ValidationError) -> str:
    lines = [f"invalid config ({error.error_count()} problem{'s' * (error.error_count() > 1)}):"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        value = "" if item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  {where or 'config'}: {item['msg']}{value}")
    return "\n".join(lines)


def _run(args: argparse.Namespace, execute: bool) -> int:
    from mshep.checks import preflight

    config = build_config(args)
    report = preflight(config)
    print(report, file=sys.stderr)
    if not execute:
        return 0
    from flows.prm import run_flow

    summary = run_flow(config)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            import yaml

            print(yaml.safe_dump(RunConfig().model_dump(mode="json"), sort_keys=False), end="")
            return 0
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
