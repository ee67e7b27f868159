"""Network: test and dry-run helpers; `SimulatedMathModel` serves a simulated maths model over
loopback HTTP (see `mshep.testing.simulator`)."""

from mshep.testing.sim_config import SimulatorConfig, SimulatorStats
from mshep.testing.sim_solutions import ReferenceProblem, first_wrong_step, load_reference
from mshep.testing.simulator import SimulatedMathModel, main, parse_args

__all__ = [
    "ReferenceProblem",
    "SimulatedMathModel",
    "SimulatorConfig",
    "SimulatorStats",
    "first_wrong_step",
    "load_reference",
    "main",
    "parse_args",
]
