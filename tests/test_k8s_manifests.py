"""The Kubernetes manifests render, validate offline and follow the rules an SRE reviews for.

Every overlay and the jobs are rendered with `kubectl kustomize` (skipped, saying so, where
kubectl is absent). Core objects are validated with `kubernetes-validate --strict` (schemas of
Kubernetes 1.37); the custom resources it cannot know (HTTPRoute, PyTorchJob) against the CRD
schemas published with Gateway API v1.6.1 and Kubeflow Training v1.9.4 (tests/crds),
with unknown fields refused as `kubectl apply --validate=strict` would. Each validator and each
policy is also shown to fail on a deliberately broken manifest, so none can pass vacuously.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).resolve().parent / "crds"
KUSTOMIZATIONS = ["k8s/base", "k8s/overlays/cpu-dev", "k8s/overlays/gpu", "k8s/overlays/ab", "k8s/jobs"]
CRD_FILES = {("gateway.networking.k8s.io", "HTTPRoute"): "gateway-api-v1.6.1_httproutes.yaml",
             ("kubeflow.org", "PyTorchJob"): "kubeflow-training-v1.9.4_pytorchjobs.yaml"}
GPU = "nvidia.com/gpu"
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")


@lru_cache(maxsize=None)
def render(path: str) -> tuple[dict, ...]:
    done = subprocess.run(["kubectl", "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True)
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def _strict(schema: dict) -> dict:
    """The schema with unknown fields refused wherever it lists properties and does not opt out."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@lru_cache(maxsize=None)
def crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    for crd in yaml.safe_load_all((CRDS / CRD_FILES[(group, kind)]).read_text()):
        if crd and crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    schema = _strict(v["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = {"type": "object"}  # the API server owns ObjectMeta
                    return jsonschema.Draft7Validator(schema)
    raise LookupError(f"no CRD schema for {group}/{version} {kind}")


def validation_errors(doc: dict) -> list[str]:
    """Schema errors of one object: kubernetes-validate for core kinds, the CRD schema for custom ones."""
    group, _, version = doc["apiVersion"].rpartition("/")
    if (group, doc["kind"]) in CRD_FILES:
        return [f"{doc['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd_validator(group, doc["kind"], version).iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{doc['kind']} {'.'.join(map(str, err.path))}: {err.message}"]
    return []


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod template an object holds."""
    spec = doc.get("spec", {})
    if doc["kind"] in LONG_RUNNING | {"Job"}:
        return [(doc["kind"], spec["template"]["spec"])]
    if doc["kind"] == "CronJob":
        return [("CronJob", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if doc["kind"] == "PyTorchJob":
        return [(f"PyTorchJob {role}", r["template"]["spec"]) for role, r in spec["pytorchReplicaSpecs"].items()]
    return []


def policy_violations(doc: dict) -> list[str]:
    """What an SRE's review would reject in one object."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    found = []
    for where, pod in pod_specs(doc):
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            found.append(f"{name} ({where}): pod does not set runAsNonRoot")
        for c in pod.get("initContainers", []) + pod["containers"]:
            resources = c.get("resources", {})
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(resources.get(part, {}))
                if missing:
                    found.append(f"{name} container {c['name']}: no {part} for {sorted(missing)}")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and tag in ("", "latest"):
                found.append(f"{name} container {c['name']}: image {image!r} is not pinned to a tag")
            if doc["kind"] in LONG_RUNNING and not (c.get("readinessProbe") and c.get("livenessProbe")):
                found.append(f"{name} container {c['name']}: needs readiness and liveness probes")
            if c.get("securityContext", {}).get("allowPrivilegeEscalation", True):
                found.append(f"{name} container {c['name']}: allowPrivilegeEscalation is not false")
            if GPU in resources.get("limits", {}) and not any(
                    t.get("key") == GPU and t.get("effect", "NoSchedule") == "NoSchedule"
                    for t in pod.get("tolerations", [])):
                found.append(f"{name} container {c['name']}: requests a GPU but the pod does not tolerate the {GPU} taint")
    if doc["kind"] == "HTTPRoute":
        for rule in doc["spec"]["rules"]:
            refs = rule.get("backendRefs", [])
            if len(refs) > 1 and sum(r.get("weight", 1) for r in refs) != 100:
                found.append(f"{name} rule {rule.get('name')}: weights sum to {sum(r.get('weight', 1) for r in refs)}, not 100")
    return found


def dangling_references(docs: tuple[dict, ...]) -> list[str]:
    """Selectors and references that point at nothing in the same render."""
    by_kind: dict[str, dict[str, dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind.get("Deployment", {}).values()]
    found = []
    for kind in ("Service", "PodDisruptionBudget"):
        for name, d in by_kind.get(kind, {}).items():
            selector = d["spec"]["selector"] if kind == "Service" else d["spec"]["selector"]["matchLabels"]
            matched = [labels for labels in pods if selector.items() <= labels.items()]
            if len(matched) != 1:
                found.append(f"{kind}/{name} selects {len(matched)} Deployments' pods")
    for name, d in by_kind.get("HorizontalPodAutoscaler", {}).items():
        if d["spec"]["scaleTargetRef"]["name"] not in by_kind.get("Deployment", {}):
            found.append(f"HorizontalPodAutoscaler/{name} scales a Deployment that is not there")
    for name, d in by_kind.get("HTTPRoute", {}).items():
        for rule in d["spec"]["rules"]:
            for ref in rule["backendRefs"]:
                if ref["name"] not in by_kind.get("Service", {}):
                    found.append(f"HTTPRoute/{name} routes to Service {ref['name']!r}, which is not there")
    for d in docs:
        for _, pod in pod_specs(d):
            if pod.get("serviceAccountName") and pod["serviceAccountName"] not in by_kind.get("ServiceAccount", {}):
                found.append(f"{d['kind']}/{d['metadata']['name']} runs as a ServiceAccount that is not there")
            for c in pod["containers"]:
                for source in c.get("envFrom", []):
                    ref = source.get("configMapRef", {}).get("name")
                    if ref and ref not in by_kind.get("ConfigMap", {}):
                        found.append(f"{d['kind']}/{d['metadata']['name']} reads ConfigMap {ref!r}, which is not there")
    return found


@needs_kubectl
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_kustomization_renders_valid_objects_with_no_policy_violation(path):
    docs = render(path)
    assert docs, f"{path} rendered nothing"
    assert [e for d in docs for e in validation_errors(d)] == []
    assert [v for d in docs for v in policy_violations(d)] == []
    assert dangling_references(docs) == []


@needs_kubectl
def test_cpu_dev_needs_no_gpu_and_gpu_overlays_pin_gpu_nodes():
    def serving(path):
        return [d for d in render(path) if d["kind"] == "Deployment"]

    dev = serving("k8s/overlays/cpu-dev")[0]["spec"]["template"]["spec"]
    assert GPU not in str(dev["containers"][0]["resources"]) and "tolerations" not in dev and "nodeSelector" not in dev
    for path in ("k8s/base", "k8s/overlays/gpu", "k8s/overlays/ab"):
        for d in serving(path):
            pod = d["spec"]["template"]["spec"]
            assert pod["containers"][0]["resources"]["limits"][GPU] == "1" and pod["nodeSelector"]


@needs_kubectl
def test_ab_pins_each_variant_to_its_alias_and_routes_by_weight_or_header():
    docs = render("k8s/overlays/ab")
    config = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    for variant in ("champion", "challenger"):
        deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(variant))
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"]
        assert config[env_from]["QANCHOR_MODEL_ALIAS"] == variant and config[env_from]["QANCHOR_VARIANT"] == variant
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    rules = {r["name"]: r for r in route["spec"]["rules"]}
    assert {b["name"]: b["weight"] for b in rules["split"]["backendRefs"]} == {
        "qanchor-serving-champion": 90, "qanchor-serving-challenger": 10}
    forced = rules["force-challenger"]
    assert forced["matches"][0]["headers"][0] == {"name": "X-QAnchor-Variant", "value": "challenger"}
    assert [b["name"] for b in forced["backendRefs"]] == ["qanchor-serving-challenger"]


@needs_kubectl
def test_batch_scoring_is_an_indexed_job_one_shard_per_completion_index():
    cron = next(d for d in render("k8s/jobs") if d["metadata"]["name"] == "qanchor-batch-scoring")
    job = cron["spec"]["jobTemplate"]["spec"]
    command = job["template"]["spec"]["containers"][0]["command"][-1]
    assert job["completionMode"] == "Indexed" and f"$JOB_COMPLETION_INDEX/{job['completions']}" in command


def _first(path: str, kind: str) -> dict:
    return copy.deepcopy(next(d for d in render(path) if d["kind"] == kind))


@needs_kubectl
@pytest.mark.parametrize("path, kind, break_it, message", [
    ("k8s/base", "Deployment", lambda d: d["spec"].__setitem__("replicas", "two"), "is not of type"),
    ("k8s/base", "Service", lambda d: d["spec"].__setitem__("prots", []), "'prots' was unexpected"),
    ("k8s/overlays/ab", "HTTPRoute", lambda d: d["spec"]["rules"][2]["backendRefs"][0].__setitem__("weight", "ninety"),
     "is not of type"),
    ("k8s/overlays/ab", "HTTPRoute", lambda d: d["spec"]["rules"][0].__setitem__("backends", []), "'backends' was unexpected"),
    ("k8s/jobs", "PyTorchJob", lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"].__setitem__("replicas", "one"),
     "is not of type"),
    ("k8s/jobs", "PyTorchJob", lambda d: d["spec"].__setitem__("elastic", {}), "'elastic' was unexpected"),
])
def test_a_broken_manifest_of_each_kind_fails_validation(path, kind, break_it, message):
    doc = _first(path, kind)
    assert validation_errors(doc) == []
    break_it(doc)
    errors = validation_errors(doc)
    assert errors and message in " ".join(errors), errors


def _drop_limits(d):
    d["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")


def _latest(d):
    d["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/qanchor/qanchor-serving:latest"


def _untolerated(d):
    d["spec"]["template"]["spec"].pop("tolerations")


def _no_probe(d):
    d["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")


def _weights(d):
    d["spec"]["rules"][2]["backendRefs"][1]["weight"] = 20


@needs_kubectl
@pytest.mark.parametrize("path, kind, break_it, message", [
    ("k8s/base", "Deployment", _drop_limits, "no limits"),
    ("k8s/base", "Deployment", _latest, "is not pinned to a tag"),
    ("k8s/base", "Deployment", _untolerated, "does not tolerate"),
    ("k8s/base", "Deployment", _no_probe, "needs readiness and liveness probes"),
    ("k8s/overlays/ab", "HTTPRoute", _weights, "weights sum to 110"),
])
def test_each_policy_rejects_the_manifest_that_breaks_it(path, kind, break_it, message):
    doc = _first(path, kind)
    assert policy_violations(doc) == []
    break_it(doc)
    assert any(message in v for v in policy_violations(doc)), policy_violations(doc)


def test_bentofile_parses_with_bentomls_own_build_config_and_names_the_service():
    from bentoml._internal.bento.build_config import BentoBuildConfig

    with (ROOT / "serving" / "bentofile.yaml").open() as f:
        config = BentoBuildConfig.from_yaml(f)
    assert config.service == "serving.service:QAnchorService"
    module, _, name = config.service.partition(":")
    assert (ROOT / (module.replace(".", "/") + ".py")).read_text().count(f"class {name}") == 1
    assert (ROOT / config.python.requirements_txt).is_file()
