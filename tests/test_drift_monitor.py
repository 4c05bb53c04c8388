"""The drift monitor: a reference from the backbone's training snapshot, daily checks that flag
each injected drift by name, pass a no-drift day, refuse input they cannot judge, and gate
pretraining and promotion.

Every part is real: generated data imported into a Feast repository, a tiny backbone and a
query-only scenario in a SQLite MLflow registry, the `qanchor monitor` commands, GE Checkpoints.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import log_tiny_backbone, tracking_store
from prometheus_client.parser import text_string_to_metric_families

from feature_repo.ingest import ImportConfig, import_data
from feature_repo.store import UserFeatureStore, write_repo
from monitoring.drift_check import run_check
from monitoring.drift_config import DriftThresholds
from monitoring.embedding_drift import embedding_drift
from monitoring.gate import latest_check
from monitoring.snapshot_profile import read_snapshot
from qanchor.cli import cli
from qanchor.synthetic.drift import DriftSpecError, parse_drift
from qanchor.synthetic.generator import GeneratorConfig, generate

USERS = 500
TRAINED = datetime(2026, 10, 1, tzinfo=timezone.utc)
TODAY = datetime(2026, 10, 15, tzinfo=timezone.utc)
DRIFT_START = "2026-09-25"
#: Independent no-drift populations the false-alarm rate is measured over.
NULL_SEEDS = 20


def _features(tmp: Path, seed: int, as_of: datetime, spec, drifts: tuple[str, ...] = (), users: int = USERS) -> Path:
    raw, features = tmp / f"raw-{seed}", tmp / f"features-{seed}"
    generate(GeneratorConfig(users=users, seed=seed, as_of=as_of, drifts=tuple(parse_drift(d) for d in drifts)),
             raw, progress=False)
    import_data(ImportConfig(events=raw / "events", profiles=raw / "profiles", out=features, spec=spec, as_of=as_of,
                             snapshots=1), progress=False)
    return features


def _store(tmp: Path, seed: int, as_of: datetime, spec, drifts: tuple[str, ...] = (),
           apply: bool = False, users: int = USERS) -> UserFeatureStore:
    """A Feast repository over a fresh import; `apply` registers it with Feast (embedding reads need that,
    feature drift reads the view sources directly)."""
    store = UserFeatureStore(write_repo(tmp / f"repo-{seed}", _features(tmp, seed, as_of, spec, drifts, users)))
    if apply:
        store.apply()
    return store


def _thresholds(folder: Path) -> Path:
    """The default thresholds with 200 users embedded per side (the default 500 costs time, not coverage)."""
    path = folder / "thresholds.yaml"
    path.write_text("embedding_users: 200\n")
    return path


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    with tracking_store(tmp):
        yield tmp


@pytest.fixture(scope="module")
def trained(registry_env, spec):
    """A training store, a tiny backbone registered as champion on it, a query-only scenario, and its reference."""
    from training import registry
    from training.scenario_registry import register_scenario

    store = _store(registry_env, 100, TRAINED, spec, apply=True)
    uri = log_tiny_backbone(spec, registry_env, seed=3, params={"data.feature_repo": str(store.repo)})
    registry.register(uri, registry.BACKBONE_MODEL, "champion", {"feature_version": store.feature_version})
    register_scenario("travel_booking", "will this user book a flight or hotel soon?", store, backbone="champion")
    result = _cli("monitor", "build-reference", "--backbone", "champion", "--thresholds", str(_thresholds(registry_env)))
    assert result.exit_code == 0, result.output
    return store


def test_build_reference_reads_the_backbones_training_store_and_embeds_its_scenarios(trained):
    folder = trained.repo / "monitoring" / "reference" / "v1"
    meta = json.loads((folder / "reference.json").read_text())
    assert meta["feature_version"] == trained.feature_version and meta["snapshots"] == [TRAINED.isoformat()]
    assert {"bill.amount", "search.events_30d", "profile.age"} <= set(meta["numeric"])
    assert {"app.kind", "profile.occupation"} <= set(meta["categorical"])
    assert set(np.load(folder / "embeddings.npz")) == {"travel_booking"}
    suite = json.loads((folder / "suites" / "bill_recent_events.json").read_text())
    assert "expect_column_kl_divergence_to_be_less_than" in {e["type"] for e in suite["expectations"]}


def test_a_no_drift_day_passes_and_writes_json_html_data_docs_and_gauges(trained, tmp_path, spec):
    today = _store(tmp_path, 7, TODAY, spec, apply=True)
    prom = tmp_path / "textfile" / "qanchor_drift.prom"
    result = _cli("monitor", "check", "--date", "2026-10-15", "--repo", str(today.repo), "--backbone", "champion",
                  "--reference", str(trained.repo / "monitoring" / "reference" / "v1"), "--textfile", str(prom),
                  "--thresholds", str(_thresholds(tmp_path)))
    assert result.exit_code == 0, result.output
    folder = today.repo / "monitoring" / "checks" / "2026-10-15"
    report = json.loads((folder / "drift.json").read_text())
    assert report["success"] and report["failed_features"] == []
    assert [e["scenario"] for e in report["embeddings"]] == ["travel_booking"]
    assert 0.3 < report["embeddings"][0]["statistics"]["domain_auc"] < 0.7
    assert (folder / "report.html").read_text().count("<img") >= 1
    assert (folder / "data_docs" / "index.html").is_file()
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert families["qanchor_drift_check_success"].samples[0].value == 1
    assert {s.labels["feature"] for s in families["qanchor_drift_psi"].samples} >= {"bill.amount", "profile.age"}
    assert latest_check(today.repo).success


@pytest.mark.parametrize("drift, feature, statistic", [
    (f"spend:1.3@{DRIFT_START}", "bill.amount", "ks"),
    (f"new-app:FlashLoan@{DRIFT_START}", "app.kind", "unseen_share"),
    (f"silent:search@{DRIFT_START}", "search.events_7d", "psi"),
    (f"trait:travel+1.5@{DRIFT_START}", "bill.events_30d", "psi"),
])
def test_each_injected_drift_fails_the_check_naming_its_feature(trained, tmp_path, spec, drift, feature, statistic):
    today = _store(tmp_path, 8, TODAY, spec, (drift,))
    result = _cli("monitor", "check", "--date", "2026-10-15", "--repo", str(today.repo), "--no-embeddings",
                  "--reference", str(trained.repo / "monitoring" / "reference" / "v1"))
    assert result.exit_code == 1, result.output
    assert "FAIL " + feature in result.output
    report = json.loads((today.repo / "monitoring" / "checks" / "2026-10-15" / "drift.json").read_text())
    flagged = {f["feature"]: f for f in report["features"] if f["failed"]}
    assert statistic in flagged[feature]["failed"]
    if drift.startswith("new-app"):
        assert flagged[feature]["movers"][0][0] == "installed flashloan (new)"
    if drift.startswith("trait"):
        bill = next(f for f in report["features"] if f["feature"] == "bill.kind")
        assert any("travel" in kind for kind, _, _ in bill["movers"][:3]), bill["movers"]
    # unrelated modalities stay quiet
    quiet = {"spend": "search.", "new-app": "bill.", "silent": "bill."}.get(drift.split(":")[0])
    if quiet:
        assert not [f for f in flagged if f.startswith(quiet)], flagged.keys()


@pytest.mark.slow
def test_false_alarm_rate_over_independent_no_drift_populations(trained, spec, tmp_path, capsys):
    """Each seed is a fresh population with no drift; a check that fails on one is a false alarm.

    About two minutes (20 imports of 500 users), so it runs in `make test-slow`; its last figure
    is in docs/monitoring.md."""
    from monitoring.reference import Reference

    thresholds = DriftThresholds()
    reference = Reference.load(trained.repo / "monitoring" / "reference" / "v1")
    alarms = []
    for seed in range(NULL_SEEDS):
        features = _features(tmp_path, 1000 + seed, TODAY, spec)
        report = run_check(reference, read_snapshot(features, spec, pd.Timestamp(TODAY), thresholds.recent_days),
                           thresholds, "2026-10-15")
        if not report.success:
            alarms.append((seed, [f.feature for f in report.failures]))
    rate = len(alarms) / NULL_SEEDS
    with capsys.disabled():
        print(f"\ndrift false-alarm rate: {len(alarms)}/{NULL_SEEDS} = {rate:.1%} no-drift days failed {alarms}")
    assert rate <= 0.05


def _break(store: UserFeatureStore, how: str) -> None:
    data = store.settings.data
    if how == "schema":
        path = next((data / "bill").glob("*.parquet"))
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("n_events"), "n_events",
                                        table.column("n_events").cast("string")), path)
    elif how == "all_null":
        path = next((data / "profile").glob("*.parquet"))
        frame = pd.read_parquet(path)
        frame["income_monthly"] = np.nan
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize("how, date, message", [
    ("empty_day", "2026-10-14", "no snapshot on 2026-10-14"),
    ("schema", "2026-10-15", "column 'n_events' changed type"),
    ("all_null", "2026-10-15", "'income_monthly' is null for all"),
])
def test_input_it_cannot_judge_is_an_error_that_writes_nothing(trained, tmp_path, spec, how, date, message):
    today = _store(tmp_path, 9, TODAY, spec, users=120)
    _break(today, how)
    result = CliRunner().invoke(cli, ["monitor", "check", "--date", date, "--repo", str(today.repo), "--no-embeddings",
                                       "--reference", str(trained.repo / "monitoring" / "reference" / "v1")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (today.repo / "monitoring" / "checks").exists()


def test_promotion_and_pretraining_refuse_on_a_failed_check_unless_forced(trained, registry_env, spec):
    from training import registry

    failed = trained.repo / "monitoring" / "checks" / "2026-10-16"
    failed.mkdir(parents=True)
    (failed / "drift.json").write_text(json.dumps({"date": "2026-10-16", "success": False,
                                                   "failed_features": ["bill.amount"], "failed_embeddings": []}))
    try:
        refused = _cli("promote", "--version", "1", "--alias", "challenger")
        assert refused.exit_code == 1 and "drift check 2026-10-16 FAILED: bill.amount" in refused.output
        assert "challenger" not in registry.client().get_registered_model(registry.BACKBONE_MODEL).aliases
        config = registry_env / "pretrain.yaml"
        config.write_text(f"data: {{feature_repo: {trained.repo}, dataset: {registry_env}/raw-100}}\n"
                          f"output_dir: {registry_env}/run\n")
        blocked = _cli("pretrain", "--config", str(config))
        assert blocked.exit_code == 1 and "pretraining refused" in blocked.output
        forced = _cli("promote", "--version", "1", "--alias", "challenger", "--force")
        assert forced.exit_code == 0, forced.output
        version = registry.client().get_model_version(registry.BACKBONE_MODEL, "1")
        assert version.tags["challenger_drift_check_forced"] == "true"
        assert version.tags["challenger_drift_check_date"] == "2026-10-16"
    finally:
        (failed / "drift.json").unlink()
        failed.rmdir()


def test_embedding_drift_sees_a_shift_the_centroid_alone_would_miss():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 16))
    same = rng.standard_normal((400, 16))
    spread = rng.standard_normal((400, 16)) * np.r_[np.full(8, 1.8), np.full(8, 0.3)]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    thresholds = DriftThresholds()
    assert not embedding_drift("s", unit(base), unit(same), thresholds).failed
    moved = embedding_drift("s", unit(base), unit(spread), thresholds)
    assert moved.failed == ["domain_auc"], moved  # the centroids differ by noise only
    broken = embedding_drift("s", unit(base), unit(same) * 2, thresholds)
    assert "unit_norm_violations" in broken.failed


@pytest.mark.parametrize("text", ["spend:abc@2026-09-01", "silent:tv@2026-09-01", "trait:luck+1@2026-09-01",
                                  "grow:2@2026-09-01", "spend:1.2@2026-13-01"])
def test_a_malformed_drift_spec_is_refused_with_the_accepted_form(text):
    with pytest.raises(DriftSpecError, match="--drift"):
        parse_drift(text)
