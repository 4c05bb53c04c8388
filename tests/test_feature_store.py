"""Generate -> validate -> import -> Feast apply -> materialize -> read, on real SQLite and Redis stores."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import AS_OF
from feature_repo.ingest import ImportConfig, import_data
from feature_repo.store import UserFeatureStore, write_repo
from qanchor.features import FeatureValueError, UserFeatures, text_key


def _expected_last_window(events: pd.DataFrame, user: str, modality: str, max_events: int,
                          end: pd.Timestamp, days: int) -> list[str]:
    mine = events[(events.user_id == user) & (events.modality == modality)
                  & (events.event_time < end) & (events.event_time >= end - pd.Timedelta(days=days))]
    return mine.sort_values("event_time", kind="stable")["text"].tail(max_events).tolist()


def test_online_read_returns_each_users_latest_window(sqlite_store, dataset, spec):
    events = pd.read_parquet(dataset / "events")
    profiles = pd.read_parquet(dataset / "profiles").set_index("user_id")
    users = profiles.index[:5].tolist()
    for features in sqlite_store.online(users):
        for m in spec.event_modalities:
            expected = _expected_last_window(events, features.user_id, m.name, m.max_events, pd.Timestamp(AS_OF), 90)
            assert list(features.modalities[m.name].texts) == expected
            assert len(features.modalities[m.name].times) == len(expected)
        assert features.profile["age"] == profiles.loc[features.user_id, "age"]
        assert features.profile["occupation"] == profiles.loc[features.user_id, "occupation"]


def test_history_aggregates_every_event_of_the_window_not_only_the_last_ones(sqlite_store, dataset, spec):
    """The event view keeps the last `max_events`; the history view counts the whole window per kind."""
    events = pd.read_parquet(dataset / "events")
    end = pd.Timestamp(AS_OF)
    bill = spec.modality("bill")
    window = events[(events.modality == "bill") & (events.event_time < end) & (events.event_time >= end - pd.Timedelta(days=90))]
    heavy = window.user_id.value_counts()
    user = heavy.index[0]
    assert heavy.iloc[0] > bill.max_events, "the fixture needs a user whose window overflows the event sequence"
    (features,) = sqlite_store.online([user])
    past = features.history["bill"]
    mine = window[window.user_id == user].assign(kind=lambda f: f.text.map(text_key))
    expected = mine.groupby("kind").size()
    assert past.events == len(mine) > len(features.modalities["bill"])
    assert dict(zip(past.kinds, past.counts[90])) == expected.sort_values(ascending=False).head(bill.history_kinds).to_dict()
    assert list(past.counts[90]) == sorted(past.counts[90], reverse=True)
    for i, kind in enumerate(past.kinds):
        rows = mine[mine.kind == kind]
        age = end - rows.event_time
        assert past.counts[7][i] == int((age < pd.Timedelta(days=7)).sum())
        assert past.counts[30][i] == int((age < pd.Timedelta(days=30)).sum())
        assert past.last_seen[i] == int(rows.event_time.max().timestamp())
        assert past.first_seen[i] == int(rows.event_time.min().timestamp())
        assert past.sums["amount"][i] == pytest.approx(rows.amount.sum())


@pytest.mark.parametrize(("column", "values", "message"), [
    ("count_30d", [-1], "'count_30d' holds a negative or non-finite value"),
    ("amount_sum", [float("inf")], "'amount_sum' holds a non-finite value"),
    ("last_seen", [1, 2], "1 kinds but 2 values of 'last_seen'"),
    ("count_7d", [None], "'count_7d' holds a missing or non-numeric value"),
])
def test_malformed_history_values_are_refused_naming_the_field(spec, column, values, message):
    row = {"bill_history__kinds": ["paid # at x, y"], "bill_history__count_7d": [0], "bill_history__count_30d": [1],
           "bill_history__count_90d": [2], "bill_history__last_seen": [1], "bill_history__first_seen": [1],
           "bill_history__amount_sum": [3.0], "bill_history__n_events": 2}
    row[f"bill_history__{column}"] = values
    with pytest.raises(FeatureValueError, match=re.escape(f"user 'u1', bill history: ") + ".*" + re.escape(message)):
        UserFeatures.from_row("u1", row, spec)


def test_data_imported_before_the_history_view_still_applies_and_serves(features, tmp_path):
    """An upgrade must not take a store down: without history folders the views are simply absent."""
    from conftest import materialized_store

    old = tmp_path / "features"
    shutil.copytree(features, old, ignore=shutil.ignore_patterns("*_history"))
    store = materialized_store(old, tmp_path / "store")
    assert not any(ref.split(":")[0].endswith("_history") for ref in store.feature_refs())
    user = sorted(store.known_users())[0]
    (served,) = store.online([user])
    assert len(served.modalities["bill"]) > 0 and all(len(h) == 0 for h in served.history.values())


def test_unknown_user_reads_as_empty(sqlite_store):
    (features,) = sqlite_store.online(["no-such-user"])
    assert features.is_empty


def test_feature_service_names_every_view(sqlite_store, spec):
    views = {ref.split(":")[0] for ref in sqlite_store.feature_refs()}
    assert views == ({f"{m.name}_events" for m in spec.event_modalities} | {"profile"}
                     | {f"{m.name}_history" for m in spec.history_modalities})


def test_the_feast_cli_understands_the_repository(sqlite_store):
    feast = Path(shutil.which("feast") or Path(__import__("sys").executable).with_name("feast"))
    result = subprocess.run([str(feast), "feature-views", "list"], cwd=sqlite_store.repo,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "bill_events" in result.stdout


def test_point_in_time_rows_never_see_later_events(tmp_path, spec):
    """Events at -25d, -15d and -5d; snapshots every 10 days. A row sees only what preceded its snapshot."""
    as_of = pd.Timestamp(AS_OF)
    events = pd.DataFrame({
        "user_id": ["alice"] * 3,
        "event_time": [as_of - pd.Timedelta(days=d) for d in (25, 15, 5)],
        "modality": ["search"] * 3,
        "text": ["searched 'early'", "searched 'middle'", "searched 'late'"],
        "amount": np.nan, "duration_s": np.nan, "dwell_s": np.nan,
    })
    profiles = pd.DataFrame({"user_id": ["alice"], "age": [30], "gender": ["female"], "city_tier": [1],
                             "occupation": ["engineer"], "income_monthly": [9000.0], "member_years": [3],
                             "credit_limit": [20000.0]})
    events.to_parquet(tmp_path / "events.parquet", index=False)
    profiles.to_parquet(tmp_path / "profiles.parquet", index=False)
    import_data(ImportConfig(events=tmp_path / "events.parquet", profiles=tmp_path / "profiles.parquet",
                             out=tmp_path / "features", spec=spec, as_of=AS_OF, snapshots=3,
                             snapshot_every_days=10), progress=False)
    store = UserFeatureStore(write_repo(tmp_path / "repo", tmp_path / "features"))
    store.apply()
    rows = pd.DataFrame({"user_id": "alice",
                         "event_timestamp": [as_of - pd.Timedelta(days=12), as_of - pd.Timedelta(days=1), as_of]})
    history = store.historical(rows).sort_values("event_timestamp")
    seen = [list(texts) for texts in history["search_events__texts"]]
    assert seen == [["searched 'early'"],
                    ["searched 'early'", "searched 'middle'"],
                    ["searched 'early'", "searched 'middle'", "searched 'late'"]]


def test_point_in_time_on_generated_data(sqlite_store, dataset):
    users = pd.read_parquet(dataset / "profiles")["user_id"].head(40)
    rng = np.random.default_rng(0)
    stamps = pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 30 * 86_400, len(users)), unit="s")
    history = sqlite_store.historical(pd.DataFrame({"user_id": users, "event_timestamp": stamps}))
    assert len(history) == len(users)
    for row in history.itertuples():
        cutoff = row.event_timestamp.timestamp()
        for column in ("bill_events__event_times", "search_events__event_times", "spm_events__event_times"):
            times = getattr(row, column)
            assert times is None or all(t < cutoff for t in times)


def test_rows_older_than_every_snapshot_fail_loudly(sqlite_store, dataset):
    user = pd.read_parquet(dataset / "profiles")["user_id"].iloc[0]
    too_early = pd.DataFrame({"user_id": [user, user],
                              "event_timestamp": [pd.Timestamp(AS_OF), pd.Timestamp(AS_OF) - pd.Timedelta(days=45)]})
    with pytest.raises(ValueError, match="found features for 1 of 2 rows.*older than every snapshot"):
        sqlite_store.historical(too_early)


def test_non_finite_feature_values_are_refused(spec):
    row = {"bill_events__texts": ["paid 1.00 at X, y"], "bill_events__event_times": [1],
           "bill_events__amount": [float("nan")]}
    with pytest.raises(FeatureValueError, match="non-finite 'amount'"):
        UserFeatures.from_row("u1", row, spec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server binary not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.redis
def test_redis_round_trip_matches_sqlite(redis_server, features, sqlite_store, dataset, tmp_path):
    store = UserFeatureStore(write_repo(tmp_path / "repo", features, online_store="redis", redis_url=redis_server))
    store.apply()
    store.materialize()
    users = pd.read_parquet(dataset / "profiles")["user_id"].head(8).tolist() + ["no-such-user"]
    assert store.online(users) == sqlite_store.online(users)
    assert store.online(users[:1])[0].modalities["bill"].texts
