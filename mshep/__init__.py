"""mshep: Math-Shepherd process-reward-model datasets as a Prefect flow deployment.

The core (records, config, prompts, parsing, answers, labelling, formats, pipeline) is pure:
importing `mshep` loads no Prefect, Ray, vLLM, datasets or Hub client.
"""

__version__ = "0.1.0"
