import json
import subprocess
import sys

CORE = [
    "mshep",
    "mshep.records",
    "mshep.config",
    "mshep.prompts",
    "mshep.parsing",
    "mshep.answers",
    "mshep.labelling",
    "mshep.formats",
    "mshep.batches",
    "mshep.generation",
    "mshep.completion",
    "mshep.failures",
    "mshep.references",
    "mshep.backends.base",
    "mshep.backends.fake",
]
HEAVY = {"prefect", "ray", "vllm", "huggingface_hub", "datasets", "torch", "fsspec", "s3fs"}


def test_core_imports_no_heavy_library():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "from mshep.answers import answers_match; answers_match('x^2', 'x**2')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert loaded & HEAVY == set()
