"""mshep.shards: a stage key covers the code the stage runs, and a shard is done only when its
data and its reference are both written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mshep.records import Stage
from mshep.shards import STAGE_CODE, ShardRef, finish_shard, finished, is_done, ref_path

MSHEP = Path(__file__).resolve().parents[1] / "mshep"
# Imported by the stages, but not code that decides their output: settings enter the keys as
# values (config, and the format names it lists), errors are messages.
NOT_CODE = {"config", "formats", "errors"}
ENTRY = {
    Stage.LOAD: "loading",
    Stage.GOLDEN: "generation",
    Stage.GENERATE: "generation",
    Stage.COMPLETE: "completion",
}


def imports(module: str) -> set[str]:
    path = MSHEP / (module.replace(".", "/") + ".py")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mshep."):
            found.add(node.module.removeprefix("mshep."))
    return found


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [] if name in NOT_CODE else imports(name)
    return seen


@pytest.mark.parametrize("stage", list(ENTRY))
def test_a_stage_key_covers_every_module_its_code_imports(stage: Stage) -> None:
    missing = closure(ENTRY[stage]) - set(STAGE_CODE[stage]) - NOT_CODE
    assert not missing, f"{stage.value} runs mshep.{sorted(missing)} outside its code digest"


def test_a_shard_is_done_when_its_data_and_then_its_reference_are_written(tmp_path: Path) -> None:
    path = str(tmp_path / "generate-k" / "shard-00000-abc.jsonl")
    assert not is_done(path)
    ref = finish_shard(Stage.GENERATE, 0, path, [ShardRef(stage="x", shard=1, path="p")], items=1)
    assert finished(path) == ref and is_done(path)
    Path(ref_path(path)).unlink()  # data without its reference: killed in between
    assert not is_done(path)
