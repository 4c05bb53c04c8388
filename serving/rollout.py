"""A/B rollout of the serving backbone on Kubernetes: weights, promotion and rollback.

The objects are the `k8s/overlays/ab` render: Deployments `qanchor-serving-champion` and
`qanchor-serving-challenger`, each serving the MLflow alias it is named after, behind the
HTTPRoute `qanchor` whose `split` rule carries the weights. Every change goes through the
Kubernetes API with the official `kubernetes` client (server-side apply for `apply`, JSON merge
patches otherwise) and is idempotent: asking for the state that already holds changes nothing.

Promotion never routes traffic to a variant whose version is not registered and ready:

1. the challenger's version must be registered (alias `challenger`) and its Deployment rolled
   out and ready;
2. all traffic moves to the challenger (it already serves that version);
3. alias `champion` moves to that version and the champion Deployment restarts to load it;
4. once the champion is rolled out and ready again, all traffic returns to it (weights 100/0).

If a step fails, the alias, the champion's pod template and the weights are put back as they
were before step 2 (in that order), so the alias and the traffic always agree.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

FIELD_MANAGER = "qanchor-rollout"
ROUTE, SPLIT_RULE = "qanchor", "split"
VARIANTS = ("champion", "challenger")
RESTART_ANNOTATION = "qanchor.io/restarted-at"
PREVIOUS_CHAMPION_TAG = "qanchor.previous_champion"


class RolloutError(RuntimeError):
    """A rollout step that cannot (or must not) go ahead; nothing was left half-done."""


def deployment_name(variant: str) -> str:
    return f"qanchor-serving-{variant}"


def _plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith("s") else "s")


def object_path(api_version: str, kind: str, namespace: str, name: str) -> str:
    """REST path of a namespaced object (core group under /api, the others under /apis)."""
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{prefix}/namespaces/{namespace}/{_plural(kind)}/{name}"


class KubeApi:
    """The few REST calls a rollout makes, through `kubernetes.client.ApiClient`."""

    def __init__(self, api_client):
        self.client = api_client

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path | None = None, context: str | None = None) -> KubeApi:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context)
        return cls(client.ApiClient())

    def _call(self, method: str, path: str, body=None, content_type: str | None = None, query=None) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        params = self.client.param_serialize(method=method, resource_path=path, query_params=query or [],
                                             header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.client.call_api(*params)
            response.read()
        except ApiException as err:
            if err.status == 404 and method == "GET":
                return None
            raise RolloutError(f"{method} {path}: {err.status} {err.reason} {(err.body or '')[:300]}") from None
        if response.status == 404 and method == "GET":
            return None
        if response.status >= 400:
            raise RolloutError(f"{method} {path}: {response.status} {response.data[:300]!r}")
        return json.loads(response.data) if response.data else None

    def get(self, path: str) -> dict | None:
        return self._call("GET", path)

    def merge_patch(self, path: str, patch: dict) -> dict:
        return self._call("PATCH", path, patch, "application/merge-patch+json")

    def apply(self, doc: dict, namespace: str) -> dict:
        path = object_path(doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace", namespace),
                           doc["metadata"]["name"])
        return self._call("PATCH", path, doc, "application/apply-patch+yaml",
                          [("fieldManager", FIELD_MANAGER), ("force", "true")])


@dataclass
class VariantStatus:
    variant: str
    ready_replicas: int
    replicas: int
    generation: int
    observed_generation: int
    updated_replicas: int
    registered_version: str | None

    @property
    def rolled_out(self) -> bool:
        """The controller saw the newest spec and every replica runs it and is ready."""
        return (self.observed_generation >= self.generation and self.replicas > 0
                and self.updated_replicas == self.replicas and self.ready_replicas == self.replicas)


@dataclass
class RolloutStatus:
    weights: dict[str, int]
    variants: dict[str, VariantStatus] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"traffic: champion {self.weights['champion']}%, challenger {self.weights['challenger']}%"]
        for v in self.variants.values():
            out.append(f"{v.variant}: {v.ready_replicas}/{v.replicas} ready, generation {v.observed_generation}/"
                       f"{v.generation}, {'rolled out' if v.rolled_out else 'ROLLING'}; qanchor-backbone@{v.variant} = "
                       f"{'v' + v.registered_version if v.registered_version else 'not registered'}")
        return out


class Registry:
    """The MLflow side of a rollout (aliases of qanchor-backbone); `training.registry` by default."""

    def version_of(self, alias: str) -> str | None:
        from training import registry
        from training.tracking import TrackingError

        try:
            return registry.backbone_version(alias)
        except TrackingError:
            return None

    def move_alias(self, alias: str, version: str, tags: dict[str, str] | None = None) -> None:
        from training import registry

        registry.promote(version, alias=alias, tags=tags)

    def set_model_tag(self, key: str, value: str) -> None:
        from training import registry

        registry.client().set_registered_model_tag(registry.BACKBONE_MODEL, key, value)

    def model_tag(self, key: str) -> str | None:
        from training import registry

        return registry.client().get_registered_model(registry.BACKBONE_MODEL).tags.get(key)


def render_overlay(overlay: Path) -> list[dict]:
    """`kubectl kustomize OVERLAY` as objects (kubectl 1.14+ bundles kustomize)."""
    try:
        done = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise RolloutError("kubectl is needed to render the overlay (`kubectl kustomize`)") from None
    except subprocess.CalledProcessError as err:
        raise RolloutError(f"kubectl kustomize {overlay} failed: {err.stderr.strip()}") from None
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _rules_with(route: dict, weights: dict[str, int]) -> list[dict]:
    """The route's rules with the split rule's weights replaced (a merge patch replaces lists whole)."""
    rules = json.loads(json.dumps(route["spec"]["rules"]))
    for rule in rules:
        if rule.get("name") == SPLIT_RULE:
            for ref in rule["backendRefs"]:
                for v in VARIANTS:
                    if ref["name"] == deployment_name(v):
                        ref["weight"] = weights[v]
    return rules


def _managed(live, rendered):
    """The live object cut down to the fields the rendered one sets (server defaults, status and
    bookkeeping such as generation are not ours to diff)."""
    if live is None:
        return None
    if isinstance(rendered, dict) and isinstance(live, dict):
        return {k: _managed(live[k], v) for k, v in rendered.items() if k in live}
    return live


def _yaml_lines(doc: dict | None) -> list[str]:
    return yaml.safe_dump(doc, sort_keys=True).splitlines() if doc else []


class Rollout:
    """The operations of `qanchor rollout` on one namespace."""

    def __init__(self, api: KubeApi, registry: Registry, namespace: str = "qanchor", dry_run: bool = False,
                 echo: Callable[[str], None] = print, wait_seconds: float = 600, poll_seconds: float = 2):
        self.api, self.registry, self.namespace, self.dry_run, self.echo = api, registry, namespace, dry_run, echo
        self.wait_seconds, self.poll_seconds = wait_seconds, poll_seconds

    # reading
    def _route_path(self) -> str:
        return object_path("gateway.networking.k8s.io/v1", "HTTPRoute", self.namespace, ROUTE)

    def _deployment_path(self, variant: str) -> str:
        return object_path("apps/v1", "Deployment", self.namespace, deployment_name(variant))

    def _route(self) -> dict:
        route = self.api.get(self._route_path())
        if route is None:
            raise RolloutError(f"HTTPRoute {self.namespace}/{ROUTE} not found; `qanchor rollout apply` the ab overlay first")
        return route

    def weights(self, route: dict | None = None) -> dict[str, int]:
        route = route or self._route()
        split = next((r for r in route["spec"]["rules"] if r.get("name") == SPLIT_RULE), None)
        if split is None:
            raise RolloutError(f"HTTPRoute {ROUTE} has no rule named {SPLIT_RULE!r}")
        by_name = {ref["name"]: ref.get("weight", 1) for ref in split["backendRefs"]}
        return {v: int(by_name.get(deployment_name(v), 0)) for v in VARIANTS}

    def variant(self, variant: str) -> VariantStatus:
        d = self.api.get(self._deployment_path(variant))
        if d is None:
            raise RolloutError(f"Deployment {self.namespace}/{deployment_name(variant)} not found")
        status = d.get("status", {})
        return VariantStatus(variant, int(status.get("readyReplicas", 0)), int(d["spec"].get("replicas", 1)),
                             int(d["metadata"].get("generation", 0)), int(status.get("observedGeneration", 0)),
                             int(status.get("updatedReplicas", 0)), self.registry.version_of(variant))

    def status(self) -> RolloutStatus:
        return RolloutStatus(self.weights(), {v: self.variant(v) for v in VARIANTS})

    # writing
    def apply(self, overlay: Path) -> list[str]:
        """Server-side apply every object of the rendered overlay; with dry_run, print the diffs."""
        done = []
        for doc in render_overlay(overlay):
            namespace = doc["metadata"].get("namespace", self.namespace)
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            if self.dry_run:
                live = self.api.get(object_path(doc["apiVersion"], doc["kind"], namespace, doc["metadata"]["name"]))
                diff = list(difflib.unified_diff(_yaml_lines(_managed(live, doc)), _yaml_lines(doc),
                                                 f"live {name}", f"rendered {name}", lineterm=""))
                self.echo("\n".join(diff) if diff else f"{name}: unchanged")
            else:
                self.api.apply(doc, namespace)
                self.echo(f"{name}: applied")
            done.append(name)
        return done

    def set_weight(self, challenger: int) -> bool:
        """Send `challenger`% of split traffic to the challenger. Returns whether anything changed."""
        if not 0 <= challenger <= 100:
            raise RolloutError(f"--challenger {challenger}: a percentage, 0 to 100")
        route = self._route()
        current = self.weights(route)
        wanted = {"champion": 100 - challenger, "challenger": challenger}
        if current == wanted:
            self.echo(f"weights already champion {wanted['champion']} / challenger {challenger}: nothing to do")
            return False
        if challenger > 0:
            self._require_serving("challenger")
        if wanted["champion"] > 0:
            self._require_serving("champion")
        self.echo(f"weights: champion {current['champion']} -> {wanted['champion']}, "
                  f"challenger {current['challenger']} -> {challenger}" + (" (dry run)" if self.dry_run else ""))
        if not self.dry_run:
            self.api.merge_patch(self._route_path(), {"spec": {"rules": _rules_with(route, wanted)}})
        return True

    def _require_serving(self, variant: str) -> VariantStatus:
        status = self.variant(variant)
        if status.registered_version is None:
            raise RolloutError(f"qanchor-backbone@{variant} is not registered: no traffic can go to the {variant}")
        if not status.rolled_out:
            raise RolloutError(f"the {variant} Deployment is not rolled out and ready "
                               f"({status.ready_replicas}/{status.replicas} ready, generation "
                               f"{status.observed_generation}/{status.generation})")
        return status

    def _restart(self, variant: str) -> str | None:
        """Restart a variant's pods so they load its alias again (what `kubectl rollout restart` does).

        Returns the annotation it replaced, so `_undo_restart` can put the old pod template back."""
        live = self.api.get(self._deployment_path(variant)) or {}
        before = (live.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}).get(RESTART_ANNOTATION)
        stamp = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        self._set_restart_annotation(variant, stamp)
        return before

    def _set_restart_annotation(self, variant: str, value: str | None) -> None:
        self.api.merge_patch(self._deployment_path(variant),
                             {"spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: value}}}}})

    def _wait_rolled_out(self, variant: str) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            status = self.variant(variant)
            if status.rolled_out:
                return
            if time.monotonic() >= deadline:
                raise RolloutError(f"the {variant} Deployment did not roll out within {self.wait_seconds:.0f} s "
                                   f"({status.ready_replicas}/{status.replicas} ready)")
            time.sleep(self.poll_seconds)

    def _move_champion(self, version: str, previous: str | None, tags: dict[str, str]) -> None:
        """Traffic to the challenger, alias champion -> version, restart champion, traffic back; undone on failure."""
        before = self.weights()
        restarted, annotation = False, None
        try:
            self.set_weight(100)
            self.registry.move_alias("champion", version, tags)
            annotation, restarted = self._restart("champion"), True
            self._wait_rolled_out("champion")
            self.set_weight(0)
        except BaseException:
            if previous is not None:
                self.registry.move_alias("champion", previous)
            try:
                if restarted:  # the old pod template comes back, so the old (ready) pods are the champion again
                    self._set_restart_annotation("champion", annotation)
                    self._wait_rolled_out("champion")
            finally:
                self.api.merge_patch(self._route_path(), {"spec": {"rules": _rules_with(self._route(), before)}})
            raise

    def promote(self, gate_tags: dict[str, str] | None = None) -> bool:
        """Make the challenger's version the champion (see the module docstring). Returns whether anything changed."""
        target = self._require_serving("challenger").registered_version
        previous = self.registry.version_of("champion")
        if previous == target and self.weights() == {"champion": 100, "challenger": 0}:
            self.echo(f"qanchor-backbone v{target} is already champion with all traffic: nothing to do")
            return False
        if self.dry_run:
            self.echo(f"would route 100% to the challenger, move champion v{previous} -> v{target}, restart the "
                      "champion, wait for it, and route 100% back to it")
            return True
        if previous is not None and previous != target:
            self.registry.set_model_tag(PREVIOUS_CHAMPION_TAG, previous)
        self._move_champion(target, previous, gate_tags or {})
        self.echo(f"promoted qanchor-backbone v{target} to champion (was {'v' + previous if previous else 'unset'}); "
                  "traffic champion 100 / challenger 0")
        return True

    def rollback(self) -> bool:
        """Back to the champion before the last promotion, with all traffic on the champion.

        The champion restarts in place (a rolling update: its current pods keep serving until the
        restarted ones are ready), because the challenger usually serves the version being left."""
        previous = self.registry.model_tag(PREVIOUS_CHAMPION_TAG)
        current = self.registry.version_of("champion")
        if previous is None:
            raise RolloutError("no earlier champion is recorded (qanchor.previous_champion); nothing to roll back to")
        if previous == current:
            if self.weights() != {"champion": 100, "challenger": 0}:
                return self.set_weight(0)
            self.echo(f"champion is already v{previous}: nothing to do")
            return False
        if self.dry_run:
            self.echo(f"would move champion v{current} -> v{previous}, restart the champion, wait for it, "
                      "and route 100% to it")
            return True
        self.registry.move_alias("champion", previous, {"rollback_from": str(current)})
        try:
            self._restart("champion")
            self._wait_rolled_out("champion")
        except BaseException:
            if current is not None:
                self.registry.move_alias("champion", current)
            raise
        self.set_weight(0)
        self.echo(f"rolled champion back to v{previous} (from v{current}); traffic champion 100 / challenger 0")
        return True
