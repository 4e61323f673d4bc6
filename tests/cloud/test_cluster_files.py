"""The cluster definitions under clusters/ and the worker image, checked offline with the tools that would apply them.

- Ray cluster launcher files: ``prepare_config`` + ``validate_config`` of the installed Ray, the same steps
  ``ray up`` runs before it calls the cloud.
- KubeRay manifests: the RayCluster / RayJob CRDs' OpenAPI v3 schemas turned into JSON Schema and checked with
  ``jsonschema``, unknown fields refused (kubectl's strict field validation).
- Pins: every version written in these files equals pyproject.toml's, so the cluster cannot drift from the project.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
LAUNCHER_FILES = ["aws-gpu.yaml", "gcp-gpu.yaml"]
KUBERAY_FILES = {"kuberay/raycluster.yaml": "RayCluster", "kuberay/rayjob.yaml": "RayJob"}
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
PINNED_FILES = [*LAUNCHER_FILES, *KUBERAY_FILES, "../Dockerfile"]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    """``name -> version`` of every ``name[extras]==version`` requirement of pyproject.toml (extras included)."""
    project = _pyproject()["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", req.strip())
        if m:
            pins.setdefault(m.group(1).lower(), m.group(3))
    return pins


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


# ---------------------------------------------------------------- Ray cluster launcher
@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_file_passes_the_launchers_own_validation(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(_load(name)))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad file
    # The launcher merges its defaults key by key: an omitted setup_commands would install Ray's nightly wheel.
    assert prepared["setup_commands"] == [] and prepared["head_setup_commands"] == []
    gpu = prepared["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and 0 == gpu["min_workers"] < gpu["max_workers"] <= prepared["max_workers"]
    assert prepared["available_node_types"][prepared["head_node_type"]]["resources"] == {"CPU": 0}


def test_the_launcher_validation_refuses_a_typo():
    """The check above has teeth: a misspelt node-type key fails the launcher's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = _load("aws-gpu.yaml")
    bad["available_node_types"]["gpu_worker"]["max_worker"] = bad["available_node_types"]["gpu_worker"].pop(
        "max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_dashboard_binds_loopback_with_token_auth(name):
    config = _load(name)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert "0.0.0.0" not in (CLUSTERS / name).read_text()


# ---------------------------------------------------------------- KubeRay
def _to_json_schema(node):
    """OpenAPI v3 (Kubernetes structural schema) -> JSON Schema: ``x-kubernetes-int-or-string`` becomes an integer
    or a string, ``nullable`` adds null, and objects that list their properties refuse others unless they preserve
    unknown fields (what ``kubectl apply`` does with strict field validation). CEL rules
    (``x-kubernetes-validations``) are not evaluated: see :func:`test_no_manifest_sets_a_field_with_a_cel_rule`."""
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    out.pop("format", None)  # int32, int64, date-time: Kubernetes' formats, not checked by jsonschema's defaults
    return out


@functools.cache
def _crd(kuberay: Path, kind: str) -> dict:
    crd = yaml.load((kuberay / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validators(kuberay):
    return {kind: jsonschema.Draft202012Validator(_to_json_schema(_crd(kuberay, kind))) for kind in CRD_FILES}


def _errors(validator, manifest) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_manifest_matches_the_crd_schema(name, validators):
    manifest = _load(name)
    kind = KUBERAY_FILES[name]
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])  # DNS-1123 label
    assert _errors(validators[kind], manifest) == []


def test_the_crd_check_refuses_unknown_fields_and_bad_quantities(validators):
    """The conversion keeps the schema's teeth: a misspelt field, a memory of "12GB" and a port that is neither an
    integer nor a string are refused; a named port (int-or-string) is accepted."""
    good = _load("kuberay/raycluster.yaml")
    assert _errors(validators["RayCluster"], good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in e for e in _errors(validators["RayCluster"], typo))
    quantity = copy.deepcopy(good)
    quantity["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = \
        "12GB"
    assert any("12GB" in e for e in _errors(validators["RayCluster"], quantity))
    probe = copy.deepcopy(good)
    container = probe["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/api/version", "port": "dashboard"}}
    assert _errors(validators["RayCluster"], probe) == []
    container["readinessProbe"]["httpGet"]["port"] = 8.5
    assert _errors(validators["RayCluster"], probe) != []


def _cel_paths(node, path=()):
    if isinstance(node, dict):
        if "x-kubernetes-validations" in node:
            yield path
        for key, child in node.get("properties", {}).items():
            yield from _cel_paths(child, (*path, key))
        if isinstance(node.get("items"), dict):
            yield from _cel_paths(node["items"], (*path, "*"))


def _has(manifest, path) -> bool:
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head == "*":
        return isinstance(manifest, list) and any(_has(m, rest) for m in manifest)
    return isinstance(manifest, dict) and head in manifest and _has(manifest[head], rest)


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_no_manifest_sets_a_field_with_a_cel_rule(name, kuberay):
    """The CEL rules of the CRDs (immutability, managedBy values, deletion rules) cannot be evaluated offline: the
    manifests set none of the fields that carry one, so skipping them skips nothing."""
    paths = list(_cel_paths(_crd(kuberay, KUBERAY_FILES[name])))
    assert paths  # the CRDs do have rules
    assert [p for p in paths if p and _has(_load(name), p)] == []


def _containers(cluster_spec: dict):
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster_spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]["containers"]


def _cluster_spec(name: str) -> dict:
    manifest = _load(name)
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_gpu_group_tracking_from_secrets_and_token_auth(name):
    spec = _cluster_spec(name)
    assert spec["authOptions"]["mode"] == "token" and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    (gpu,) = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert 0 == gpu["minReplicas"] < gpu["maxReplicas"]
    resources = gpu["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    for group, containers in _containers(spec):
        for c in containers:
            assert c["resources"]["requests"] and c["resources"]["limits"], (group, c["name"])
            env = {e["name"]: e for e in c["env"]}
            assert {"MLFLOW_TRACKING_URI", "FAIRRAY_STORAGE_PATH"} <= set(env), (group, c["name"])
            for e in env.values():  # the URI, the bucket and every credential from a Secret, never inline
                assert "value" not in e and "secretKeyRef" in e["valueFrom"], (group, e)


def test_rayjob_runs_fairray_sweep_on_the_raycluster_of_raycluster_yaml():
    job = _load("kuberay/rayjob.yaml")["spec"]
    assert job["entrypoint"].startswith("fairray sweep /fairray/spec/sweep.yaml --address auto")
    assert '"tracking.uri=$MLFLOW_TRACKING_URI"' in job["entrypoint"]
    assert '"storage.path=$FAIRRAY_STORAGE_PATH"' in job["entrypoint"]
    assert job["submissionMode"] == "HTTPMode" and job["shutdownAfterJobFinishes"] is True
    # The same cluster as raycluster.yaml, plus the spec ConfigMap mounted on the head.
    cluster = copy.deepcopy(job["rayClusterSpec"])
    head = cluster["headGroupSpec"]["template"]["spec"]
    spec_volumes = [v for v in head["volumes"] if v["name"] == "sweep-spec"]
    assert spec_volumes == [{"name": "sweep-spec", "configMap": {"name": "fairray-spec"}}]
    head["volumes"] = [v for v in head["volumes"] if v["name"] != "sweep-spec"]
    mounts = head["containers"][0]["volumeMounts"]
    assert {"name": "sweep-spec", "mountPath": "/fairray/spec", "readOnly": True} in mounts
    head["containers"][0]["volumeMounts"] = [m for m in mounts if m["name"] != "sweep-spec"]
    assert cluster == _load("kuberay/raycluster.yaml")["spec"]


# ---------------------------------------------------------------- pins
def test_every_version_in_the_cluster_files_is_pyprojects():
    pins = _pins()
    version = _pyproject()["project"]["version"]
    ray = pins["ray"]
    texts = {name: (CLUSTERS / name).read_text() for name in PINNED_FILES}
    for name, text in texts.items():
        for pkg, pinned in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([0-9][^\s\"',;]*)", text):
            if pkg.lower() in pins:
                assert pinned == pins[pkg.lower()], f"{name}: {pkg}=={pinned}, pyproject.toml pins {pins[pkg.lower()]}"
        for image_version in re.findall(r"fairray-worker:([^\s\"']+)", text):
            assert image_version == version, f"{name}: image fairray-worker:{image_version}, fairray is {version}"
        for ray_version in re.findall(r"rayVersion:\s*\"?([^\s\"]+)", text):
            assert ray_version == ray, f"{name}: rayVersion {ray_version}, pyproject.toml pins ray=={ray}"
    for name in [*LAUNCHER_FILES, *KUBERAY_FILES]:
        assert re.search(r"fairray-worker:", texts[name]), f"{name} names no fairray worker image"
    dockerfile = texts["../Dockerfile"]
    (base,) = re.findall(r"^FROM rayproject/ray:(\S+)", dockerfile, flags=re.M)
    ray_tag, py_tag, build = base.split("-")
    assert (ray_tag, build) == (ray, "gpu"), f"Dockerfile: FROM rayproject/ray:{base}, pyproject.toml pins ray=={ray}"
    assert re.search(rf"ARG FAIRRAY_VERSION={re.escape(version)}$", dockerfile, flags=re.M)
    assert f"ray.__version__ == '{ray}'" in dockerfile
    minimum = tuple(map(int, _pyproject()["project"]["requires-python"].lstrip(">=").split(".")))
    assert (3, int(py_tag.removeprefix("py3"))) >= minimum


def test_the_wheel_the_dockerfile_installs_builds_with_pyprojects_pins(tmp_path):
    """``pip wheel --no-deps .`` gives the file the Dockerfile copies, with the pinned requirements, the cluster
    extra, the console script and the built-in data."""
    version = _pyproject()["project"]["version"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = tmp_path / f"fairray-{version}-py3-none-any.whl"
    assert re.search(r"dist/fairray-\$\{FAIRRAY_VERSION\}-py3-none-any\.whl", (REPO / "Dockerfile").read_text())
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"fairray-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"fairray-{version}.dist-info/entry_points.txt").decode()
    requires = set(re.findall(r"^Requires-Dist: (.+)$", meta, flags=re.M))
    for pkg, pinned in _pins().items():
        if pkg in ("torch", "torchaudio", "optuna", "mlflow"):
            assert f"{pkg}=={pinned}" in requires
    ray = _pins()["ray"]
    assert f"ray[train,tune]=={ray}" in requires and f'ray[default]=={ray}; extra == "cluster"' in requires
    assert "fairray = fairray.cli:main" in entry_points
    assert "fairray/data/builtin/ser3.npz" in names
