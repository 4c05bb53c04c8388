"""Training reads: the direct DuckDB join over the parquet sources returns exactly what Feast's own
point-in-time join returns, and bulk conversion checks Arrow columns as strictly as single rows."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64

from conftest import AS_OF
from feature_repo.point_in_time import parquet_views
from feature_repo.store import UserFeatureStore, write_repo
from qanchor.features import FeatureValueError, UserFeatures


@pytest.fixture(scope="module")
def readers(features, tmp_path_factory):
    """One imported dataset behind three readers: direct (the default), Feast on DuckDB, Feast on dask."""
    root = tmp_path_factory.mktemp("readers")
    duck = write_repo(root / "duck", features)
    dask = write_repo(root / "dask", features, offline_store="dask")
    for repo in (duck, dask):
        UserFeatureStore(repo).apply()
    return {"direct": UserFeatureStore(duck), "feast-duckdb": UserFeatureStore(duck, point_in_time="feast"),
            "feast-dask": UserFeatureStore(dask, point_in_time="feast")}


def _columns(store: UserFeatureStore, entities: pd.DataFrame) -> dict[str, list]:
    return {name: column.to_pylist() for name, column in store.historical_columns(entities).items()}


def _entity_rows(dataset, n: int, seed: int) -> pd.DataFrame:
    """Times spread over the 30 days before as_of, exactly at both snapshots among them."""
    users = pd.read_parquet(dataset / "profiles", columns=["user_id"])["user_id"].head(n).tolist()
    rng = np.random.default_rng(seed)
    times = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 30 * 86_400, n), unit="s")
    times = times.where(np.arange(n) % 5 != 0, pd.Timestamp(AS_OF))
    times = times.where(np.arange(n) % 7 != 0, pd.Timestamp(AS_OF) - pd.Timedelta(days=30))
    return pd.DataFrame({"user_id": users, "event_timestamp": times})


def test_direct_join_equals_feasts_duckdb_join_column_for_column(readers, dataset):
    """Repeated (user, time) rows included: both readers keep every entity row, in order."""
    entities = _entity_rows(dataset, 80, seed=1)
    entities = pd.concat([entities, entities.head(10)], ignore_index=True)
    direct, feast = _columns(readers["direct"], entities), _columns(readers["feast-duckdb"], entities)
    assert direct.keys() == feast.keys()
    for name in direct:
        assert direct[name] == feast[name], name
    assert direct["user_id"] == entities["user_id"].tolist()


def test_direct_reads_equal_feasts_dask_join(readers, dataset):
    """Distinct (user, time) rows: Feast's dask engine silently drops entity rows that repeat a pair."""
    entities = _entity_rows(dataset, 60, seed=2)
    users, times = entities["user_id"].tolist(), entities["event_timestamp"].tolist()
    direct = readers["direct"].features_at(users, times)
    assert [u.user_id for u in direct] == users
    assert direct == readers["feast-dask"].features_at(users, times)
    assert any(len(u.modalities["bill"]) for u in direct)


def test_a_view_ttl_ends_exactly_where_feasts_does(readers, dataset):
    """Feast keeps a row while `row time + ttl >= entity time`: the boundary second is in, the next is out."""
    user = pd.read_parquet(dataset / "profiles", columns=["user_id"])["user_id"].iloc[0]
    window = readers["direct"].spec.window_days
    edge = pd.Timestamp(AS_OF) + pd.Timedelta(days=window)
    entities = pd.DataFrame({"user_id": [user] * 3, "event_timestamp": [edge - pd.Timedelta(seconds=1), edge,
                                                                        edge + pd.Timedelta(seconds=1)]})
    direct, feast = _columns(readers["direct"], entities), _columns(readers["feast-duckdb"], entities)
    assert direct == feast
    assert [n is not None for n in direct["bill_events__n_events"]] == [True, True, False]
    assert direct["profile__age"][2] is not None  # the profile's own TTL is years


def test_rows_without_any_snapshot_fail_the_read_naming_one(readers, dataset):
    user = pd.read_parquet(dataset / "profiles", columns=["user_id"])["user_id"].iloc[0]
    with pytest.raises(ValueError, match=r"found features for 1 of 2 rows.*older than every snapshot"):
        readers["direct"].features_at([user, user], [pd.Timestamp(AS_OF), pd.Timestamp(AS_OF) - pd.Timedelta(days=45)])


def test_sources_other_than_local_parquet_go_through_feast():
    """A warehouse, object store or remapped source is Feast's to join (Spark, Ray, BigQuery, ...)."""
    user = Entity(name="user", join_keys=["user_id"])

    def view(**source: object) -> FeatureView:
        return FeatureView(name="v", entities=[user], ttl=timedelta(days=1), schema=[Field(name="x", dtype=Float64)],
                           source=FileSource(timestamp_field="event_timestamp", **source))

    assert parquet_views([view(path="s3://bucket/features/v.parquet")]) is None
    assert parquet_views([view(path="/no/such/folder")]) is None
    assert parquet_views([view(path="/tmp", field_mapping={"raw_x": "x"})]) is None


def _arrow_and_rows(store: UserFeatureStore, entities: pd.DataFrame) -> tuple[dict, list[dict]]:
    columns = dict(store.historical_columns(entities))
    table = pa.table(columns)
    return columns, table.to_pylist()


def test_bulk_conversion_equals_row_by_row_conversion(readers, dataset):
    store = readers["direct"]
    entities = _entity_rows(dataset, 40, seed=3)
    columns, rows = _arrow_and_rows(store, entities)
    users = entities["user_id"].tolist()
    bulk = UserFeatures.from_columns(users, columns, store.spec)
    assert bulk == [UserFeatures.from_row(u, row, store.spec) for u, row in zip(users, rows)]
    assert bulk == UserFeatures.from_rows(users, rows, store.spec)
    assert any(len(u.history["bill"]) for u in bulk)


@pytest.mark.parametrize("source", ["arrow", "python rows"])
def test_a_bad_value_in_a_bulk_read_names_the_user_and_position(readers, dataset, source):
    store = readers["direct"]
    entities = _entity_rows(dataset, 12, seed=4)
    columns, rows = _arrow_and_rows(store, entities)
    users = entities["user_id"].tolist()
    victim = next(i for i, row in enumerate(rows) if len(row["bill_events__amount"]) >= 3)
    rows[victim]["bill_events__amount"][2] = float("nan")
    expected = re.escape(f"user {users[victim]!r}, modality 'bill': non-finite 'amount' at event positions [2]")
    with pytest.raises(FeatureValueError, match=expected):
        if source == "arrow":
            amounts = pa.array([row["bill_events__amount"] for row in rows], type=columns["bill_events__amount"].type)
            UserFeatures.from_columns(users, {**columns, "bill_events__amount": amounts}, store.spec)
        else:
            UserFeatures.from_rows(users, rows, store.spec)


def test_a_list_feature_given_as_a_scalar_is_refused(spec):
    with pytest.raises(FeatureValueError, match=r"user 'u1': 'bill_events__texts' must be a list, not str"):
        UserFeatures.from_row("u1", {"bill_events__texts": "paid 1.00 at X"}, spec)
