"""Batch scoring and the Feast write-back: shards split users without overlap, parts are resumable,
vectors pushed into the online store read back exactly, a refused run changes nothing, and the
per-backbone feature service logs served rows. Real SQLite Feast store, real tiny model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import AS_OF, materialized_store
from qanchor.embedding_engine import EmbeddingEngine
from qanchor.model import ModelSettings, QAnchor
from qanchor.scenario import LoadedScenario
from serving.batch_scoring import BatchScoringError, Shard, open_run, plan_run, score_shard, shard_users

REF = int(pd.Timestamp(AS_OF).timestamp())


@pytest.fixture(scope="module")
def store(features, tmp_path_factory):
    """A repository of its own: these tests apply views and push vectors into it."""
    return materialized_store(features, tmp_path_factory.mktemp("batch") / "store")


@pytest.fixture(scope="module")
def model(spec):
    model = QAnchor.build(spec, ModelSettings(), seed=9)
    model.registry_version = "7"
    return model


@pytest.fixture(scope="module")
def scenarios():
    return {name: LoadedScenario(name, query, True, "7", (), 1.0, None, version="1")
            for name, query in [("travel", "will this user book travel?"), ("credit", "will this user repay late?")]}


class _WithBrokenRows:
    """The real store, except that chosen users come back with no features or a NaN amount."""

    def __init__(self, store, empty: set[str], nan: set[str]):
        self.store, self.empty, self.nan = store, empty, nan

    def known_users(self) -> set[str]:
        return self.store.known_users()

    def online_rows(self, user_ids: list[str]) -> list[dict]:
        rows = self.store.online_rows(user_ids)
        for user_id, row in zip(user_ids, rows):
            if user_id in self.empty:
                row.update({k: None for k in row})
            if user_id in self.nan:
                row.update({"bill_events__texts": ["paid"], "bill_events__event_times": [REF - 60],
                            "bill_events__amount": [float("nan")]})
        return rows

    def push_embeddings(self, frame: pd.DataFrame) -> None:
        self.store.push_embeddings(frame)


def test_shards_split_the_users_without_overlap_or_gaps(store):
    users = store.known_users()
    shards = [set(shard_users(users, Shard(i, 3))) for i in range(3)]
    assert set().union(*shards) == users
    assert sum(len(s) for s in shards) == len(users)
    assert all(len(s) > len(users) / 6 for s in shards)  # a hash split, not everything in one shard


@pytest.mark.parametrize("text", ["3/2", "1", "a/b", "0/0", "-1/4"])
def test_a_bad_shard_is_refused_with_the_expected_form(text):
    with pytest.raises(BatchScoringError, match="--shard"):
        Shard.parse(text)


def test_pushed_vectors_read_back_online_equal_the_engines(store, model, scenarios, tmp_path):
    out = tmp_path / "embeddings"
    run = plan_run(model, scenarios, REF, store.feature_version, Shard(0, 2), part_users=64)
    store.register_embeddings(out, list(scenarios), "7")
    report = score_shard(model, scenarios, store, out, Shard(0, 2), run, batch_users=16)

    expected_users = shard_users(store.known_users(), Shard(0, 2))
    assert report.scored == report.users == len(expected_users)
    assert report.parts_written == -(-len(expected_users) // 64)
    frame = pd.read_parquet(out)
    assert sorted(frame["user_id"]) == expected_users
    sample = frame["user_id"].tolist()[:5]
    online = store.online_embeddings(sample, list(scenarios))
    engine = EmbeddingEngine(model)
    direct = engine.embed(store.online(sample), [REF] * 5, [engine.scenario_suffix(s) for s in scenarios.values()])
    for i, row in enumerate(online):
        assert row["backbone_version"] == "7"
        for j, name in enumerate(scenarios):
            np.testing.assert_allclose(row[name], frame[name].iloc[i], atol=0)
            np.testing.assert_allclose(row[name], direct[i, j], atol=1e-5)


def test_a_rerun_resumes_from_the_parts_on_disk(store, model, scenarios, tmp_path):
    out = tmp_path / "embeddings"
    run = plan_run(model, scenarios, REF, store.feature_version, Shard(1, 2), part_users=50)
    first = score_shard(model, scenarios, store, out, Shard(1, 2), run, push=False)
    parts = sorted(out.glob("part-*.parquet"))
    untouched = parts[0].stat().st_mtime_ns
    parts[-1].unlink()  # as if the pod died before its last part

    second = score_shard(model, scenarios, store, out, Shard(1, 2), run, push=False)
    assert (second.parts_written, second.parts_skipped) == (1, first.parts_written - 1)
    assert second.scored == first.scored
    assert parts[0].stat().st_mtime_ns == untouched
    assert json.loads((out / "_shard-00001-of-00002.json").read_text())["scored"] == first.scored


def test_a_different_run_in_the_same_folder_is_refused_before_anything_changes(store, model, scenarios, tmp_path):
    out = tmp_path / "embeddings"
    run = plan_run(model, scenarios, REF, store.feature_version, Shard(0, 4), part_users=64)
    open_run(out, run)
    settings_before = (store.repo / "qanchor.json").read_text()
    other = plan_run(model, {"travel": scenarios["travel"]}, REF, store.feature_version, Shard(0, 4), part_users=64)
    with pytest.raises(BatchScoringError, match=r"different scoring run \(differs in \['scenarios'\]\)"):
        open_run(out, other)
    assert not list(out.glob("part-*"))
    assert (store.repo / "qanchor.json").read_text() == settings_before


def test_users_the_service_would_refuse_are_skipped_and_counted(store, model, scenarios, tmp_path):
    users = shard_users(store.known_users(), Shard(0, 4))
    source = _WithBrokenRows(store, empty={users[0]}, nan={users[1], users[2]})
    out = tmp_path / "embeddings"
    run = plan_run(model, scenarios, REF, store.feature_version, Shard(0, 4), part_users=40)
    report = score_shard(model, scenarios, source, out, Shard(0, 4), run, push=False)
    assert report.skipped_users == {"no_features": 1, "invalid_features": 2}
    assert report.scored == len(users) - 3
    assert not {users[0], users[1], users[2]} & set(pd.read_parquet(out)["user_id"])
    resumed = score_shard(model, scenarios, source, out, Shard(0, 4), run, push=False)
    assert resumed.parts_written == 0 and resumed.skipped_users == report.skipped_users


def test_a_backbone_feature_service_names_its_modalities_and_logs_served_rows(store, spec):
    from datetime import datetime, timezone

    name = store.register_backbone("7", ["bill", "app", "tabular"])
    assert name == "qanchor_backbone_v7"
    service = store._store.get_feature_service(name)
    assert sorted(p.name for p in service.feature_view_projections) == [
        "app_events", "app_history", "bill_events", "bill_history", "profile"]

    users = sorted(store.known_users())[:3]
    rows = [{"user_id": u, **r} for u, r in zip(users, store.online_rows(users, timestamps=True))]
    assert store.log_served_features("7", rows, ["req-1"] * 3, datetime.now(timezone.utc))
    logged = pq.read_table(store.repo / "feature_logs" / name).to_pandas()
    assert sorted(logged["user_id"]) == users
    assert (logged["bill_events__texts__status"] == 1).all()
    assert "search_events__texts" not in logged.columns  # only what that backbone reads
    assert not store.log_served_features("8", rows, ["req-2"] * 3, datetime.now(timezone.utc))


def test_a_backbone_reading_an_unknown_modality_is_refused_and_changes_nothing(store):
    before = (store.repo / "qanchor.json").read_text()
    with pytest.raises(ValueError, match=r"modalities \['loans'\]"):
        store.register_backbone("9", ["bill", "loans"])
    assert (store.repo / "qanchor.json").read_text() == before
    assert "qanchor_backbone_v9" not in [s.name for s in store._store.list_feature_services()]
