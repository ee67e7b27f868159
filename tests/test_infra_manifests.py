"""infra/ files that these machines cannot run (no cloud, no Kubernetes, no container runtime),
checked by the strongest validation available offline:

- the `ray up` cluster files: Ray's own cluster schema (ray/autoscaler/ray-schema.json, shipped
  with the flow env's Ray), then Ray's config preparation and validation as `ray up` does them
  (defaults filled, node types and worker counts checked); the on-prem file is also bootstrapped
  as `ray up` would (local provider, no SSH);
- the Kubernetes manifests: kubernetes-validate --strict (the Kubernetes API's schemas, shipped
  in the package) for Deployment and Secret; the RayCluster against KubeRay's CRD schema
  (vendored in infra/k8s/schemas/, made strict: unknown fields fail, as kubeconform -strict);
  plus the references between them (Secret name, head Service, Ray version, image);
- the compose file: the Compose Specification schema (check-jsonschema's vendored copy);
- the shell scripts: `bash -n`, and shellcheck where installed.

What runs for real is in tests/test_infra_slurm.py and tests/test_infra_postgres.py."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
BIN = Path(sys.executable).parent
CLUSTER_FILES = sorted((INFRA / "ray").glob("cluster-*.yaml"))
SCRIPTS = [INFRA / "slurm" / "mshep-ray.sbatch", INFRA / "slurm" / "setup-envs.sh"]


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- the `ray up` cluster files ---------------------------------------------------------------


def test_there_are_cluster_files() -> None:
    assert {p.name for p in CLUSTER_FILES} == {"cluster-aws.yaml", "cluster-onprem.yaml"}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_rays_schema_and_preparation(path: Path) -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)  # as written: unknown keys fail
    prepared = prepare_config(copy.deepcopy(config))  # what `ray up` does before launching
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    if config["provider"]["type"] == "aws":
        assert types["gpu_worker"]["max_workers"] >= types["gpu_worker"]["min_workers"] >= 1
        assert prepared["max_workers"] >= types["gpu_worker"]["min_workers"]


def test_the_schema_check_catches_a_misspelt_key() -> None:
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "ray" / "cluster-aws.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(config, schema)


def test_onprem_cluster_file_bootstraps_as_ray_up_does() -> None:
    from ray.autoscaler._private.commands import _bootstrap_config

    config = yaml.safe_load((INFRA / "ray" / "cluster-onprem.yaml").read_text())
    bootstrapped = _bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    node = bootstrapped["available_node_types"]["local.cluster.node"]
    assert node["min_workers"] == node["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_sets_up_both_environments(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    commands = [
        c
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in config.get(key, [])
    ]
    setup = "\n".join(commands)
    assert 'pip install -q -e "$HOME/mshep[flow]"' in setup  # the flow env
    assert "infra/engine/make-venv.sh ~/mshep-engine gpu" in setup  # the engine env
    assert (REPO / "infra" / "engine" / "make-venv.sh").is_file()
    assert "MSHEP_FLOW_PYTHON=$HOME/mshep-flow/bin/python" in setup  # same Python and Ray
    # Ray runs from the flow env on every node, with the nodes' settings in its environment.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = config[key][-1]
        assert "~/mshep-flow/bin/ray start" in start and ". ~/mshep.env" in start
    assert "--port=6379" in config["head_start_ray_commands"][-1]
    assert "$RAY_HEAD_IP:6379" in config["worker_start_ray_commands"][-1]
    # What is mounted exists in the checkout (node.env is the user's copy of the example).
    for target, source in config["file_mounts"].items():
        local = REPO / source
        assert local.exists() or local.with_name(local.name + ".example").exists(), source
        assert "mshep" in target


# --- Kubernetes -------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted((INFRA / "k8s").glob("*.yaml"))
        for doc in load_all(path)
    ]


def strict(node: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists the known ones (Kubernetes
    would silently drop them: a misspelt field is a setting that never applies)."""
    if isinstance(node, dict):
        node = {key: strict(value) for key, value in node.items()}
        if (
            node.get("type") == "object"
            and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [strict(value) for value in node]
    return node


def raycluster_validator() -> Any:
    import jsonschema

    schema = json.loads((INFRA / "k8s" / "schemas" / "raycluster-ray.io-v1.json").read_text())
    return jsonschema.Draft7Validator(strict(schema))


def test_kubernetes_manifests_are_the_expected_kinds() -> None:
    kinds = sorted((name, doc["kind"]) for name, doc in k8s_documents())
    assert kinds == [
        ("prefect-worker.yaml", "Deployment"),
        ("raycluster.yaml", "RayCluster"),
        ("secret.example.yaml", "Secret"),
    ]


@pytest.mark.parametrize(
    "name,doc",
    [(n, d) for n, d in k8s_documents() if d["apiVersion"] != "ray.io/v1"],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_core_manifest_passes_kubernetes_validate_strict(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_validate_catches_a_misspelt_field() -> None:
    import kubernetes_validate

    doc = next(d for _, d in k8s_documents() if d["kind"] == "Deployment")
    bad = copy.deepcopy(doc)
    bad["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_raycluster_passes_kuberays_crd_schema_strictly() -> None:
    doc = next(d for _, d in k8s_documents() if d["kind"] == "RayCluster")
    errors = [f"{list(e.path)}: {e.message}" for e in raycluster_validator().iter_errors(doc)]
    assert errors == []
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 0  # misspelt: would be dropped
    assert any("minReplica" in e.message for e in raycluster_validator().iter_errors(bad))


def test_the_manifests_fit_together() -> None:
    import ray

    docs = {doc["kind"]: doc for _, doc in k8s_documents()}
    cluster, worker, secret = docs["RayCluster"], docs["Deployment"], docs["Secret"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__  # the flow env's Ray: the image's
    # The head Service: the worker pod joins at ray-head:6379, deployments/prefect.yaml's
    # gsm8k-ray names ray://ray-head:10001.
    head_service = spec["headGroupSpec"]["headService"]["metadata"]["name"]
    assert head_service == "ray-head"
    pod = worker["spec"]["template"]["spec"]
    assert f"ray start --address={head_service}:6379 --num-cpus=0 --num-gpus=0" in (
        " ".join(pod["containers"][0]["args"])
    )
    deployments = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    ray_addresses = {
        d["work_pool"].get("job_variables", {}).get("env", {}).get("RAY_ADDRESS")
        for d in deployments["deployments"]
    } - {None}
    for address in ray_addresses:
        assert re.match(rf"ray://{head_service}:10001$", address), address
    ports = {
        p["containerPort"]
        for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {6379, 10001} <= ports
    # One image everywhere; every container reads the Secret that exists.
    containers = [
        *spec["headGroupSpec"]["template"]["spec"]["containers"],
        *(c for group in spec["workerGroupSpecs"] for c in group["template"]["spec"]["containers"]),
        *pod["containers"],
        *pod.get("initContainers", []),
    ]
    assert len({c["image"] for c in containers}) == 1
    for container in containers:
        for source in container.get("envFrom", []):
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
    assert {"PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_SECRET_ACCESS_KEY"} <= set(
        secret["stringData"]
    )
    # GPU workers ask for GPUs; groups are sized consistently.
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
    assert "--pool mshep-ray --type process" in " ".join(pod["containers"][0]["args"])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MSHEP_HOME"] == "/opt/mshep"  # where the Dockerfile puts the checkout


def test_dockerfile_builds_both_environments_from_the_checkout() -> None:
    text = (INFRA / "k8s" / "Dockerfile").read_text()
    assert "COPY . /opt/mshep" in text
    assert 'pip install --no-cache-dir -e "/opt/mshep[flow]"' in text
    assert "bash /opt/mshep/infra/engine/make-venv.sh /opt/mshep-engine" in text
    assert "MSHEP_HOME=/opt/mshep" in text
    ignore = (INFRA / "k8s" / "Dockerfile.dockerignore").read_text().split()
    assert ".git" in ignore and "**/.venv" in ignore


# --- the Prefect server's compose file ---------------------------------------------------------


def test_compose_file_passes_the_compose_spec() -> None:
    checked = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(INFRA / "prefect" / "compose.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_file_has_the_production_settings() -> None:
    import prefect

    text = (INFRA / "prefect" / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert {"postgres", "prefect-server", "s3", "create-bucket"} <= set(services)
    server = services["prefect-server"]
    assert server["image"] == f"prefecthq/prefect:{prefect.__version__}-python3.11"
    env = server["environment"]
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://prefect:${POSTGRES_PASSWORD}@postgres:5432/"
    )
    assert (
        "127.0.0.1" not in env["PREFECT_UI_API_URL"]
        and "${PUBLIC_HOST" in env["PREFECT_UI_API_URL"]
    )
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert ":" in service["image"] and not service["image"].endswith(":latest"), name
    # Every variable the file needs is in the example .env.
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (INFRA / "prefect" / "env.example").read_text()
    defined = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
    assert needed <= defined | {"S3_BUCKET"}, needed - defined
    nodes = (INFRA / "prefect" / "node.env.example").read_text()
    for name in ("PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        assert re.search(rf"^{name}=", nodes, re.MULTILINE)


# --- scripts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(path: Path) -> None:
    checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="no shellcheck (apt-get install shellcheck)"
)
def test_scripts_pass_shellcheck() -> None:
    checked = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_sbatch_script_reads_its_settings_from_the_environment() -> None:
    """Parametrised by environment and sbatch options, never by edited copies."""
    text = (INFRA / "slurm" / "mshep-ray.sbatch").read_text()
    for name in ("MSHEP_CONFIG", "MSHEP_VENV", "MSHEP_ENGINE_VENV", "PREFECT_API_URL",
                 "MSHEP_MODE", "MSHEP_POOL", "MSHEP_RAY_TMP"):  # fmt: skip
        assert f"${{{name}" in text or f"${name}" in text, name
    directives = re.findall(r"^#SBATCH (.+)$", text, re.MULTILINE)
    assert "--ntasks-per-node=1" in directives and "--exclusive" in directives
    assert "/tmp/ray-$SLURM_JOB_ID" in text  # short: Ray's sockets live under it
