"""Bad input is rejected with a report naming each failed expectation, and nothing is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import AS_OF
from feature_repo.ingest import ImportConfig, build_history, import_data
from monitoring.validation import DataValidationError
from qanchor.user_files import UserFileError


def _fingerprint(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def good_events(dataset) -> pd.DataFrame:
    return pd.read_parquet(dataset / "events").head(2_000).copy()


def _drop_text(e):
    return e.drop(columns="text")


def _amount_as_text(e):
    return e.assign(amount=e["amount"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.2f}"))


def _nan_amount(e):
    e.loc[e.index[e["modality"] == "bill"][:1], "amount"] = np.nan
    return e


def _future_times(e):
    e.loc[e.index[:3], "event_time"] = pd.Timestamp(AS_OF) + pd.Timedelta(days=2)
    return e


def _unknown_modality(e):
    e.loc[e.index[:2], "modality"] = "tiktok"
    return e


def _empty(e):
    return e.iloc[0:0]


def _too_long_text(e):
    e.loc[e.index[:4], "text"] = "x" * 1_000
    return e


def _negative_amount(e):
    e.loc[e.index[e["modality"] == "bill"][:5], "amount"] = -3.0
    return e


@pytest.mark.parametrize(
    ("corrupt", "expectation", "column", "rows"),
    [
        (_drop_text, "expect_column_to_exist", "text", None),
        (_amount_as_text, "expect_column_values_to_be_in_type_list", "amount", 2_000),
        (_nan_amount, "expect_column_values_to_not_be_null", "amount", 1),
        (_future_times, "expect_column_values_to_be_between", "event_time", 3),
        (_unknown_modality, "expect_column_values_to_be_in_set", "modality", 2),
        (_empty, "expect_table_row_count_to_be_between", None, None),
        (_too_long_text, "expect_column_value_lengths_to_be_between", "text", 4),
        (_negative_amount, "expect_column_values_to_be_between", "amount", 5),
    ],
    ids=["missing-column", "wrong-type", "nan-amount", "future-timestamps", "unknown-modality", "empty-file",
         "text-too-long", "amount-out-of-range"],
)
def test_bad_events_are_rejected_and_the_store_is_untouched(
    tmp_path, dataset, features, sqlite_store, spec, good_events, corrupt, expectation, column, rows
):
    bad = tmp_path / "events.parquet"
    corrupt(good_events).to_parquet(bad, index=False)
    user = pd.read_parquet(dataset / "profiles")["user_id"].iloc[0]
    before_files = _fingerprint(features, sqlite_store.repo)
    before_online = sqlite_store.online_rows([user])

    with pytest.raises(DataValidationError) as err:
        import_data(ImportConfig(events=bad, profiles=dataset / "profiles", out=features, spec=spec, as_of=AS_OF),
                    overwrite=True, progress=False)

    failures = [f for r in err.value.reports for f in r.failures]
    assert any(f.expectation == expectation and f.column == column and f.unexpected_count == rows for f in failures), failures
    assert expectation in str(err.value) and "nothing was written" in str(err.value)
    assert _fingerprint(features, sqlite_store.repo) == before_files
    assert sqlite_store.online_rows([user]) == before_online
    assert not list(features.parent.glob(".features.*")), "no staging directory may be left behind"


@pytest.mark.parametrize(
    ("corrupt", "expectation", "column"),
    [
        (lambda p: pd.concat([p, p.head(2)]), "expect_column_values_to_be_unique", "user_id"),
        (lambda p: p.assign(income_monthly=np.where(p.index == 0, np.nan, p["income_monthly"])),
         "expect_column_values_to_not_be_null", "income_monthly"),
        (lambda p: p.assign(gender="robot"), "expect_column_values_to_be_in_set", "gender"),
        (lambda p: p.drop(columns="age"), "expect_column_to_exist", "age"),
    ],
    ids=["duplicate-user", "nan-income", "unknown-category", "missing-field"],
)
def test_bad_profiles_are_rejected(tmp_path, dataset, spec, corrupt, expectation, column):
    bad = tmp_path / "profiles.parquet"
    corrupt(pd.read_parquet(dataset / "profiles").reset_index(drop=True)).to_parquet(bad, index=False)
    out = tmp_path / "features"
    with pytest.raises(DataValidationError) as err:
        import_data(ImportConfig(events=dataset / "events", profiles=bad, out=out, spec=spec, as_of=AS_OF),
                    progress=False)
    assert any(f.expectation == expectation and f.column == column for r in err.value.reports for f in r.failures)
    assert not out.exists()


def test_unreadable_input_gets_a_specific_error(tmp_path, dataset, spec):
    junk = tmp_path / "events.parquet"
    junk.write_text("user_id,event_time\nu1,yesterday\n")
    config = ImportConfig(events=junk, profiles=dataset / "profiles", out=tmp_path / "f", spec=spec, as_of=AS_OF)
    with pytest.raises(UserFileError, match="not readable parquet"):
        import_data(config, progress=False)
    with pytest.raises(UserFileError, match="does not exist"):
        import_data(ImportConfig(events=tmp_path / "nope", profiles=dataset / "profiles", out=tmp_path / "f",
                                 spec=spec, as_of=AS_OF), progress=False)
    assert not (tmp_path / "f").exists()


def test_naive_timestamps_are_taken_as_utc(tmp_path, dataset, spec, good_events):
    naive = good_events.assign(event_time=good_events["event_time"].dt.tz_convert("UTC").dt.tz_localize(None))
    naive.to_parquet(tmp_path / "events.parquet", index=False)
    summary = import_data(ImportConfig(events=tmp_path / "events.parquet", profiles=dataset / "profiles",
                                       out=tmp_path / "f", spec=spec, as_of=AS_OF), progress=False)
    assert summary.events == len(good_events)
    assert all(r.success for r in summary.reports)


def test_history_keeps_the_most_frequent_kinds_and_counts_every_window(spec):
    """build_history on a hand-made window: 3 kinds, a cap of 2, counts per 7/30/90 days."""
    snapshot = pd.Timestamp("2026-10-01", tz="UTC")
    days = {"paid 1.00 at A, x": [1, 2, 80], "paid 2.00 at B, y": [40, 50], "paid 3.00 at C, z": [3], "old": [95]}
    rows = [("u1", snapshot - pd.Timedelta(days=d), text, 1.5) for text, ds in days.items() for d in ds]
    events = pd.DataFrame(rows, columns=["user_id", "event_time", "text", "amount"]).assign(modality="bill")
    bill = spec.modality("bill").model_copy(update={"history_kinds": 2})
    spec = spec.model_copy(update={"modalities": tuple(bill if m.name == "bill" else m for m in spec.modalities)})
    table = build_history(events, np.array(["u1", "u2"], dtype=object), spec, bill, snapshot).to_pylist()
    first, idle = table
    assert first["kinds"] == ["paid # at a, x", "paid # at b, y"]  # C (one event) falls off the cap of 2
    assert first["count_7d"] == [2, 0] and first["count_30d"] == [2, 0] and first["count_90d"] == [3, 2]
    assert first["amount_sum"] == [4.5, 3.0]
    assert first["n_events"] == 6, "every event of the 90-day window counts, kept kinds or not; the 95-day one does not"
    assert first["first_seen"][0] == int((snapshot - pd.Timedelta(days=80)).timestamp())
    assert idle["kinds"] == [] and idle["n_events"] == 0
