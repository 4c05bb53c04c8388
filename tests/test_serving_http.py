"""The BentoML service over HTTP: a real `bentoml serve` on a loopback port, a real MLflow registry
(SQLite) and the real SQLite Feast store. Covers readiness, every refusal of the contract, scenario
reload without restart, vectors equal to the library's, and a bounded concurrent load."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch

from conftest import log_tiny_backbone, tracking_store
from training import registry
from training.scenario_registry import register_scenario
from training.scenario_tuning import TuningSettings

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, status: int, seconds: float = 120) -> requests.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            response = requests.get(url, timeout=5)
            if response.status_code == status:
                return response
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still starting its worker
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer {status} within {seconds} s")


@pytest.fixture(scope="module")
def registered(tmp_path_factory, sqlite_store, spec):
    """A tracking store holding one tiny backbone (v1, alias challenger; no champion yet) and a tuned scenario."""
    tmp = tmp_path_factory.mktemp("serving")
    with tracking_store(tmp) as uri:
        model_uri = log_tiny_backbone(spec, tmp, seed=5)
        registry.register(model_uri, registry.BACKBONE_MODEL, "challenger", {"feature_version": sqlite_store.feature_version},
                          on_version=lambda v: {"feature_service": sqlite_store.register_backbone(v, list(spec.names))})
        users = pd.read_parquet(sqlite_store.settings.data / "profile", columns=["user_id"])["user_id"].tolist()
        labels = pd.DataFrame({"user_id": users, "label": [i % 3 == 0 for i in range(len(users))]}).astype({"label": int})
        register_scenario("travel_booking", "will this user book travel soon?", sqlite_store, labels, backbone="challenger",
                          settings=TuningSettings(tokens=2, steps=4, batch_size=16, eval_every=2))
        yield {"uri": uri, "tmp": tmp, "users": users}


@pytest.fixture(scope="module")
def server(registered, sqlite_store):
    """`bentoml serve` asked for `champion`, which does not exist yet: it must start unready."""
    port = _free_port()
    log = (registered["tmp"] / "server.log").open("w")
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], "QANCHOR_MODEL_ALIAS": "champion",
           "QANCHOR_FEATURE_REPO": str(sqlite_store.repo), "QANCHOR_ADMIN_TOKEN": TOKEN, "QANCHOR_VARIANT": "blue",
           "QANCHOR_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "QANCHOR_FEATURE_LOG_ROWS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "serving.service:QAnchorService",
                                "--host", "127.0.0.1", "--port", str(port)],
                               cwd=Path(__file__).resolve().parents[1], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(base + "/livez", 200)
        yield {"base": base, "log": registered["tmp"] / "server.log"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def ready(server, registered):
    """Readiness follows loading: unready (503 + Retry-After) until `champion` exists, then ready."""
    assert requests.get(server["base"] + "/readyz", timeout=5).status_code == 503
    early = requests.post(server["base"] + "/embed", json={"user_ids": ["u"], "scenarios": ["q x"]}, timeout=10)
    assert early.status_code == 503 and early.json()["error"] == "not_ready" and "Retry-After" in early.headers
    registry.promote("1")
    _wait(server["base"] + "/readyz", 200)
    return server["base"]


def _post(base: str, path: str, body, **kwargs) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(base + path, data=data, headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
                         timeout=60, **kwargs)


def test_embed_returns_the_librarys_vectors_for_scenarios_and_free_text(ready, registered, sqlite_store):
    users = registered["users"][:3]
    response = _post(ready, "/embed", {"user_ids": users, "scenarios": ["travel_booking", "is this user a night owl?"]})
    assert response.status_code == 200, response.text
    assert response.headers["X-QAnchor-Variant"] == "blue" and response.headers["X-QAnchor-Backbone-Version"] == "1"
    body = response.json()
    assert body["backbone_version"] == "1" and body["feature_version"] == sqlite_store.feature_version
    served = np.array([[r["embeddings"]["travel_booking"], r["embeddings"]["is this user a night owl?"]]
                       for r in body["results"]])
    model = registry.load_model("1")
    scenario = registry.load_scenario("travel_booking")
    features = sqlite_store.online(users)
    with torch.no_grad():
        expected_free = model.embed(features, ["is this user a night owl?"], reference_time=body["reference_time"])
        expected_scenario = model.embed(features, reference_time=body["reference_time"], scenario=scenario)
    np.testing.assert_allclose(served[:, 1], expected_free[:, 0], atol=1e-4)
    np.testing.assert_allclose(served[:, 0], expected_scenario[:, 0], atol=1e-4)


def test_score_returns_class_probabilities_of_tuned_scenarios(ready, registered):
    response = _post(ready, "/score", {"user_ids": registered["users"][:2], "scenarios": ["travel_booking"]})
    assert response.status_code == 200, response.text
    scores = response.json()["results"][0]["scores"]["travel_booking"]
    assert set(scores) == {"0", "1"} and abs(sum(scores.values()) - 1) < 1e-5


@pytest.mark.parametrize(("path", "body", "status", "error"), [
    ("/embed", {"user_ids": ["nobody"], "scenarios": ["is this user a night owl?"]}, 404, "unknown_user"),
    ("/embed", {"user_ids": ["USERS"], "scenarios": ["no_such_scenario"]}, 400, "unknown_scenario"),
    ("/embed", {"user_ids": ["USERS"], "scenarios": ["will this user " * 30]}, 422, "query_too_long"),
    ("/embed", "{not json", 400, "malformed_body"),
    ("/embed", {"user_ids": ["USERS"]}, 400, "malformed_body"),
    ("/embed", {"user_ids": "USERS", "scenarios": ["x y"]}, 400, "malformed_body"),
    ("/embed", {"user_ids": ["USERS"], "scenarios": ["x y"], "extra": 1}, 400, "malformed_body"),
    ("/embed", {"user_ids": [f"u{i}" for i in range(257)], "scenarios": ["x y"]}, 413, "too_many_users"),
    ("/embed", {"user_ids": ["USERS"], "scenarios": [f"query number {i}" for i in range(33)]}, 413, "too_many_scenarios"),
    ("/embed", {"user_ids": ["inline"], "scenarios": ["x y"], "features": {"inline": {"bill_events__texts": []}}},
     422, "missing_features"),
    ("/score", {"user_ids": ["USERS"], "scenarios": ["no_such_scenario"]}, 400, "unknown_scenario"),
    ("/scenarios/reload", {}, 401, "unauthorized"),
])
def test_bad_requests_get_a_specific_json_error_and_no_traceback(ready, server, registered, path, body, status, error):
    if isinstance(body, dict):
        body = json.loads(json.dumps(body).replace('"USERS"', json.dumps(registered["users"][0])))
    response = _post(ready, path, body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == error and payload["detail"], payload
    assert "Traceback" not in server["log"].read_text()


def test_nan_in_inline_features_is_refused(ready, registered, sqlite_store):
    user = registered["users"][0]
    row = {k: v for k, v in sqlite_store.online_rows([user])[0].items() if "__" in k}
    row = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in row.items()}
    amounts = next(k for k, v in row.items() if k.startswith("bill_events__") and k.endswith("amount"))
    assert row[amounts], "the fixture user needs bill events"
    row[amounts][0] = float("nan")
    response = _post(ready, "/embed", json.dumps({"user_ids": [user], "scenarios": ["x y"], "features": {user: row}}))
    assert response.status_code == 422 and response.json()["error"] == "invalid_features", response.text
    assert "non-finite 'amount'" in response.json()["detail"]


def test_a_scenario_registered_while_serving_appears_after_reload(ready, registered, sqlite_store):
    before = requests.get(ready + "/scenarios", timeout=10).json()
    assert [s["name"] for s in before["scenarios"]] == ["travel_booking"]
    register_scenario("night_owls", "is this user active late at night?", sqlite_store, backbone="1")
    assert "night_owls" not in {s["name"] for s in requests.get(ready + "/scenarios", timeout=10).json()["scenarios"]}
    denied = _post(ready, "/scenarios/reload", {}, headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401
    reloaded = _post(ready, "/scenarios/reload", {}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reloaded.status_code == 200 and reloaded.json()["scenarios"] == ["night_owls", "travel_booking"]
    after = _post(ready, "/embed", {"user_ids": registered["users"][:1], "scenarios": ["night_owls"]})
    assert after.status_code == 200 and len(after.json()["results"][0]["embeddings"]["night_owls"]) == 128
    scoring = _post(ready, "/score", {"user_ids": registered["users"][:1], "scenarios": ["night_owls"]})
    assert scoring.status_code == 400 and scoring.json()["error"] == "scenario_not_scorable"


def test_concurrent_load_has_no_errors_and_the_cache_serves_repeat_users(ready, registered):
    users = registered["users"][:30]
    bodies = [{"user_ids": [users[i % len(users)]], "scenarios": ["travel_booking", "does this user like deals?"]}
              for i in range(300)]

    def call(body: dict) -> tuple[int, float]:
        start = time.perf_counter()
        response = _post(ready, "/embed", body)
        return response.status_code, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, bodies))
    statuses = [s for s, _ in results]
    latencies = np.array([t for _, t in results]) * 1000
    print(f"\n300 requests from 16 clients: p50 {np.percentile(latencies, 50):.0f} ms, "
          f"p99 {np.percentile(latencies, 99):.0f} ms")
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
    metrics = requests.get(ready + "/metrics", timeout=10).text
    hits = float(next(line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("qanchor_prefix_cache_hits_total")))
    assert hits >= 270, "every user after its first request is a cache hit"
    assert "qanchor_request_errors_total" in metrics and "bentoml_service_request_total" in metrics


def test_vectors_pushed_by_score_batch_read_back_online_equal_the_services(ready, registered, sqlite_store):
    from click.testing import CliRunner

    from serving.cli import score_batch

    out = registered["tmp"] / "embeddings"
    result = CliRunner().invoke(score_batch, ["--repo", str(sqlite_store.repo), "--out", str(out), "--alias", "champion",
                                              "--scenarios", "travel_booking", "--part-users", "128", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"{len(registered['users'])} of {len(registered['users'])} users scored" in result.output
    users = registered["users"][5:9]
    pushed = sqlite_store.online_embeddings(users, ["travel_booking"])
    served = _post(ready, "/embed", {"user_ids": users, "scenarios": ["travel_booking"]}).json()["results"]
    for row, answer in zip(pushed, served):
        assert row["backbone_version"] == "1"
        np.testing.assert_allclose(row["travel_booking"], answer["embeddings"]["travel_booking"], atol=1e-5)


def test_served_feature_rows_land_in_the_backbone_feature_log(ready, registered, sqlite_store):
    """Training/serving skew needs what was served: the rows the service read are written, per request,
    to the Feast feature log of `qanchor_backbone_v1` (flushed every row in this test's settings)."""
    import pyarrow.parquet as pq

    users = registered["users"][10:12]
    assert _post(ready, "/embed", {"user_ids": users, "scenarios": ["night owl?"]}).status_code == 200
    logged = pq.read_table(sqlite_store.repo / "feature_logs" / "qanchor_backbone_v1").to_pandas()
    assert set(users) <= set(logged["user_id"])
    row = logged[logged["user_id"] == users[0]].iloc[-1]
    assert list(row["bill_events__texts"]) == list(sqlite_store.online_rows([users[0]])[0]["bill_events__texts"])
    metrics = requests.get(ready + "/metrics", timeout=10).text
    assert "qanchor_feature_log_rows_written_total" in metrics


def test_metrics_carry_the_newest_drift_checks_gauges(ready, sqlite_store):
    """A drift check landing in the store's `monitoring/checks/` shows on the next scrape, no restart."""
    from prometheus_client.parser import text_string_to_metric_families

    folder = sqlite_store.repo / "monitoring" / "checks" / "2026-10-02"
    folder.mkdir(parents=True)
    report = {"date": "2026-10-02", "success": False, "snapshot": "2026-10-02T00:00:00+00:00",
              "failed_features": ["bill.amount"], "failed_embeddings": [],
              "features": [{"feature": "bill.amount", "failed": ["ks"], "statistics": {"psi": 0.05, "ks": 0.09}}],
              "embeddings": [{"scenario": "travel_booking", "failed": [], "statistics": {"domain_auc": 0.52}}]}
    (folder / "drift.json").write_text(json.dumps(report))
    try:
        families = {f.name: f for f in text_string_to_metric_families(requests.get(ready + "/metrics", timeout=10).text)}
        assert families["qanchor_drift_check_success"].samples[0].value == 0
        ks = families["qanchor_drift_ks"].samples[0]
        assert ks.labels == {"feature": "bill.amount"} and ks.value == 0.09
        assert families["qanchor_embedding_drift_domain_auc"].samples[0].labels == {"scenario": "travel_booking"}
    finally:
        (folder / "drift.json").unlink()
        folder.rmdir()
