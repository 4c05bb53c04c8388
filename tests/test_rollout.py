"""`qanchor rollout` against a Kubernetes API stand-in and a real MLflow registry.

The API server is `tests/kube_stand_in.py` (a stand-in: no kube-apiserver can run here); the
registry is a real SQLite MLflow store with two registered tiny backbones. The invariant checked
at every write the rollout makes: no traffic weight above zero on a variant whose alias is not
registered or whose Deployment is not rolled out and ready, and no restart of a variant that
still takes traffic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qanchor.cli import cli
from serving.rollout import (
    PREVIOUS_CHAMPION_TAG,
    ROUTE,
    KubeApi,
    Registry,
    Rollout,
    RolloutError,
    deployment_name,
    object_path,
    render_overlay,
)
from conftest import log_tiny_backbone, tracking_store
from kube_stand_in import StandInApiServer, deployment

NS = "qanchor"
ROOT = Path(__file__).resolve().parents[1]
ROUTE_PATH = object_path("gateway.networking.k8s.io/v1", "HTTPRoute", NS, ROUTE)
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed here")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, spec):
    """qanchor-backbone v1 (champion) and v2 (challenger) in a fresh SQLite registry."""
    from training import registry

    tmp = tmp_path_factory.mktemp("rollout")
    with tracking_store(tmp):
        uri = log_tiny_backbone(spec, tmp, seed=1)
        registry.register(uri, registry.BACKBONE_MODEL, "champion", {})
        registry.register(uri, registry.BACKBONE_MODEL, "challenger", {})
        yield tmp


def _route(champion: int, challenger: int) -> dict:
    ab = yaml.safe_load((ROOT / "k8s/overlays/ab/httproute.yaml").read_text())
    ab["metadata"]["namespace"] = NS
    for ref in ab["spec"]["rules"][2]["backendRefs"]:
        ref["weight"] = champion if ref["name"].endswith("champion") else challenger
    return ab


def _weights(server: StandInApiServer) -> dict[str, int]:
    split = server.objects[ROUTE_PATH]["spec"]["rules"][2]["backendRefs"]
    return {ref["name"].rsplit("-", 1)[1]: ref["weight"] for ref in split}


@pytest.fixture
def cluster(backbones):
    """The ab objects live in the stand-in, at 90/10, with the invariant recorded on every write."""
    from training import registry

    registry.promote("1", alias="champion")
    registry.promote("2", alias="challenger")
    with StandInApiServer() as server:
        for variant in ("champion", "challenger"):
            server.put(object_path("apps/v1", "Deployment", NS, deployment_name(variant)),
                       deployment(deployment_name(variant), NS))
        server.put(ROUTE_PATH, _route(90, 10))

        def invariant(path: str, new: dict) -> str | None:
            live = {v: server.objects[object_path("apps/v1", "Deployment", NS, deployment_name(v))]
                    for v in ("champion", "challenger")}
            if path == ROUTE_PATH:
                weights = {ref["name"].rsplit("-", 1)[1]: ref["weight"] for ref in new["spec"]["rules"][2]["backendRefs"]}
                for variant, weight in weights.items():
                    status = live[variant]["status"]
                    ready = status["readyReplicas"] == status["replicas"] == status.get("updatedReplicas")
                    if weight > 0 and (Registry().version_of(variant) is None or not ready):
                        return f"{weight}% routed to {variant}, which is not registered and ready"
            elif path.endswith(deployment_name("champion")) and _weights(server)["champion"] > 0:
                if new["spec"]["template"] != live["champion"]["spec"]["template"]:
                    return f"champion restarted while taking {_weights(server)['champion']}% of traffic"
            return None

        server.checks.append(invariant)
        yield server


def _rollout(server: StandInApiServer, **kwargs) -> tuple[Rollout, list[str]]:
    from kubernetes import client

    lines: list[str] = []
    config = client.Configuration(host=server.url)
    return Rollout(KubeApi(client.ApiClient(config)), Registry(), NS, echo=lines.append, poll_seconds=0.05,
                   **kwargs), lines


def test_set_weight_moves_the_split_and_is_idempotent(cluster):
    rollout, lines = _rollout(cluster)
    assert rollout.set_weight(25) and _weights(cluster) == {"champion": 75, "challenger": 25}
    writes = len(cluster.writes)
    assert not rollout.set_weight(25) and len(cluster.writes) == writes and "nothing to do" in lines[-1]
    forced = [r for r in cluster.objects[ROUTE_PATH]["spec"]["rules"] if r["name"] == "force-challenger"]
    assert forced[0]["backendRefs"] == [{"name": "qanchor-serving-challenger", "port": 80}], "header rules untouched"
    assert cluster.violations == []


def test_dry_run_changes_nothing(cluster):
    rollout, lines = _rollout(cluster, dry_run=True)
    assert rollout.set_weight(50) and rollout.promote()
    assert cluster.writes == [] and _weights(cluster) == {"champion": 90, "challenger": 10}
    assert "(dry run)" in lines[0] and lines[1].startswith("would route 100% to the challenger")


def test_no_traffic_to_a_variant_that_is_not_ready(cluster):
    cluster.objects[object_path("apps/v1", "Deployment", NS, deployment_name("challenger"))]["status"]["readyReplicas"] = 0
    with pytest.raises(RolloutError, match="challenger Deployment is not rolled out and ready"):
        _rollout(cluster)[0].set_weight(50)
    assert cluster.writes == []


def test_status_reports_weights_readiness_and_registered_versions(cluster):
    lines = _rollout(cluster)[0].status().lines()
    assert lines[0] == "traffic: champion 90%, challenger 10%"
    assert "champion: 1/1 ready, generation 1/1, rolled out; qanchor-backbone@champion = v1" in lines
    assert "challenger: 1/1 ready, generation 1/1, rolled out; qanchor-backbone@challenger = v2" in lines


def test_promote_moves_the_alias_then_the_traffic_never_serving_an_unready_variant(cluster):
    from training import registry

    rollout, _ = _rollout(cluster)
    assert rollout.promote({"drift_check": "passed"})
    assert Registry().version_of("champion") == "2" and _weights(cluster) == {"champion": 100, "challenger": 0}
    assert Registry().model_tag(PREVIOUS_CHAMPION_TAG) == "1"
    assert registry.client().get_model_version(registry.BACKBONE_MODEL, "2").tags["champion_drift_check"] == "passed"
    route_writes = [json.dumps(body) for path, _, body in cluster.writes if path == ROUTE_PATH]
    assert len(route_writes) == 2, "100% to the challenger, then 100% back to the restarted champion"
    assert cluster.violations == []
    assert not rollout.promote(), "a second promotion is a no-op"


def test_a_promotion_that_fails_midway_leaves_alias_and_weights_as_they_were(cluster):
    cluster.stuck.add(deployment_name("champion"))
    rollout, _ = _rollout(cluster, wait_seconds=0.5)
    with pytest.raises(RolloutError, match="did not roll out"):
        rollout.promote()
    assert Registry().version_of("champion") == "1" and _weights(cluster) == {"champion": 90, "challenger": 10}
    assert cluster.violations == []


def test_a_failed_weight_write_midway_is_undone_too(cluster):
    rollout, _ = _rollout(cluster)
    original = cluster.objects[ROUTE_PATH]
    cluster.fail_writes[object_path("apps/v1", "Deployment", NS, deployment_name("champion"))] = 500
    with pytest.raises(RolloutError, match="500"):
        rollout.promote()
    assert Registry().version_of("champion") == "1"
    assert cluster.objects[ROUTE_PATH]["spec"] == original["spec"]


def test_rollback_returns_to_the_previous_champion_with_all_traffic(cluster):
    rollout, _ = _rollout(cluster)
    rollout.promote()
    assert rollout.rollback()
    assert Registry().version_of("champion") == "1" and _weights(cluster) == {"champion": 100, "challenger": 0}
    assert not rollout.rollback()
    # Rolling back restarts the champion in place (a rolling update: its old pods serve until the
    # new ones are ready), so only the routing half of the invariant applies here.
    assert [v for v in cluster.violations if "routed to" in v] == []


@needs_kubectl
def test_apply_server_side_applies_the_rendered_overlay_and_dry_run_then_shows_no_diff(backbones):
    overlay = ROOT / "k8s/overlays/ab"
    rendered = render_overlay(overlay)
    with StandInApiServer() as server:
        rollout, lines = _rollout(server)
        applied = rollout.apply(overlay)
        assert len(applied) == len(rendered) and all(kind == "application/apply-patch+yaml" for _, kind, _ in server.writes)
        assert ROUTE_PATH in server.objects
        writes = len(server.writes)
        rollout.dry_run = True
        rollout.apply(overlay)
        assert len(server.writes) == writes
        assert all(line.endswith(": unchanged") for line in lines[len(rendered):]), lines[len(rendered):]


def test_cli_promote_refuses_on_a_failed_drift_check_unless_forced(cluster, backbones, sqlite_store, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": {"server": cluster.url}}],
        "users": [{"name": "sre", "user": {"token": "t"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "sre"}}]}))
    checks = tmp_path / "repo"
    shutil.copytree(sqlite_store.repo, checks, ignore=shutil.ignore_patterns("*.db"))
    failed = checks / "monitoring" / "checks" / "2026-10-16"
    failed.mkdir(parents=True)
    (failed / "drift.json").write_text(json.dumps({"date": "2026-10-16", "success": False,
                                                   "failed_features": ["app.kind"], "failed_embeddings": []}))
    args = ["rollout", "promote", "--repo", str(checks), "--kubeconfig", str(kubeconfig), "-n", NS]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 1 and "promotion refused: drift check 2026-10-16 FAILED: app.kind" in refused.output
    assert cluster.writes == [] and Registry().version_of("champion") == "1"
    forced = CliRunner().invoke(cli, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert Registry().version_of("champion") == "2"
    status = CliRunner().invoke(cli, ["rollout", "status", "--kubeconfig", str(kubeconfig), "-n", NS])
    assert "traffic: champion 100%, challenger 0%" in status.output
