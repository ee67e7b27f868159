"""Prefect: the whole pipeline on an embedded default, with no server, no network and no GPU.

`mshep demo` and the `demo` deployment run `mshep_demo`: the simulated maths model (an
OpenAI-compatible server on 127.0.0.1, in this process) answers for the generator and the
completer, on the first GSM8K test questions shipped inside mshep (MIT, OpenAI). The labels are
made by the same flow a real run uses (`mshep_flow`, here a subflow); only the model is
simulated. Its parameters are `mshep_flow`'s sections but `golden` and `serving` (the simulator
is both), merged over a deployment's field by field in the same way.
"""

from importlib.resources import files
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.prm import mshep_flow, run_config
from mshep.config import (
    CompleterConfig,
    DatasetConfig,
    ExecutionConfig,
    GeneratorConfig,
    OutputConfig,
    RunConfig,
    ServingConfig,
)

BUNDLED = "bundled:gsm8k-test-200"  # dataset.source of the sample inside mshep
DEMO = RunConfig(
    dataset=DatasetConfig(source=BUNDLED, limit=50),
    generator=GeneratorConfig(model="mshep-simulated"),
    completer=CompleterConfig(model="mshep-simulated"),
    serving=ServingConfig(token_env="MSHEP_DEMO_NO_TOKEN"),
    output=OutputConfig(path="mshep-demo"),
    execution=ExecutionConfig(shard_size=25),
)


def sample_path() -> Path:
    """The bundled GSM8K sample: 200 test questions with their reference answers."""
    return Path(str(files("mshep") / "data" / "gsm8k-test-200.jsonl"))


@flow(name="mshep-demo", flow_run_name="demo · simulated model")
def mshep_demo(
    dataset: DatasetConfig = DEMO.dataset,
    generator: GeneratorConfig = DEMO.generator,
    completer: CompleterConfig = DEMO.completer,
    output: OutputConfig = DEMO.output,
    execution: ExecutionConfig = DEMO.execution,
) -> dict[str, Any]:
    """Label bundled GSM8K questions (50 of 200 by default) with a simulated model."""
    from mshep.testing.simulator import SimulatedMathModel, SimulatorConfig

    config = run_config(
        {
            "dataset": dataset,
            "golden": DEMO.golden,
            "generator": generator,
            "completer": completer,
            "serving": DEMO.serving,
            "output": output,
            "execution": execution,
        }
    )
    if config.dataset.source == BUNDLED:
        config.dataset.source = str(sample_path())
    with SimulatedMathModel(SimulatorConfig(), sample_path()) as sim:
        get_run_logger().info("simulated model serving at %s", sim.base_url)
        config.serving.base_url = sim.base_url
        return mshep_flow(**{name: getattr(config, name) for name in RunConfig.model_fields})
