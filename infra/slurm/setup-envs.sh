#!/usr/bin/env bash
# Builds mshep's two environments once, on a login node, on a filesystem every compute node
# mounts at the same path (Ray needs the same interpreter path and version on every node):
#   the flow env    <flow-venv>:   pip install -e "<repo>[flow]" (Prefect, prefect-ray, Ray, ...)
#   the engine env  <engine-venv>: infra/engine/make-venv.sh <engine-venv> gpu (vllm, Ray, the
#                                  mshep core), only when an engine dir is given
# Then point infra/slurm/mshep-ray.sbatch at them: MSHEP_VENV=<flow-venv>, and
# MSHEP_ENGINE_VENV=<engine-venv> (or serving.engine_python: <engine-venv>/bin/python).
#
#   infra/slurm/setup-envs.sh [flow-venv] [engine-venv] [cpu|gpu]
#   (defaults: <repo>/.venv, no engine env, gpu)
#
# What you edit: nothing; PYTHON picks the base interpreter (default python3, 3.11 or newer) and
# PIP_EXTRA adds pip arguments (e.g. an index URL). Run it again after `git pull`: pip reinstalls
# in place, make-venv.sh skips an engine env whose pins did not change.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
FLOW=${1:-$REPO/.venv}
ENGINE=${2:-}
KIND=${3:-gpu}
PYTHON=${PYTHON:-python3}
read -r -a EXTRA <<<"${PIP_EXTRA:-}"

if [[ ! -x $FLOW/bin/python ]]; then
    "$PYTHON" -m venv "$FLOW"
fi
"$FLOW/bin/python" -m pip install --quiet --upgrade pip "${EXTRA[@]}"
"$FLOW/bin/python" -m pip install --quiet -e "${REPO}[flow]" "${EXTRA[@]}"
"$FLOW/bin/python" -c 'import mshep, prefect, prefect_ray, ray; print("flow env ok:", mshep.__version__, "prefect", prefect.__version__, "ray", ray.__version__)'

if [[ -n $ENGINE ]]; then
    # The engine env must match the flow env's Python and Ray: make-venv.sh reads them from here.
    MSHEP_FLOW_PYTHON=$FLOW/bin/python PYTHON=$PYTHON bash "$REPO/infra/engine/make-venv.sh" "$ENGINE" "$KIND"
fi
echo "MSHEP_VENV=$FLOW${ENGINE:+ MSHEP_ENGINE_VENV=$ENGINE}"
