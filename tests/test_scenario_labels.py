"""Scenario labels are checked against the feature store before any tuning: every bad case is
reported with a specific reason, all at once."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from conftest import AS_OF
from training.scenario_labels import ScenarioLabelError, validate_labels

OLDEST = pd.Timestamp(AS_OF) - pd.Timedelta(days=30)
TTL = timedelta(days=90)


@pytest.fixture(scope="module")
def known(sqlite_store) -> set[str]:
    return sqlite_store.known_users()


@pytest.fixture()
def labels(dataset) -> pd.DataFrame:
    table = pd.read_parquet(dataset / "labels")
    return pd.DataFrame({"user_id": table["user_id"], "label": table["mkt_coupon_redeem"].astype(int)})


def _check(frame, known, **kwargs):
    return validate_labels(frame, known, OLDEST, pd.Timestamp(AS_OF), TTL, **kwargs)


def test_binary_labels_map_to_contiguous_classes(labels, known):
    result = _check(labels, known)
    assert result.is_binary and result.classes == ("0", "1")
    assert (result.frame["class_index"] == labels["label"]).all()
    assert (result.frame["label_time"] == pd.Timestamp(AS_OF)).all()


def test_string_class_ids_are_multi_class(labels, known):
    names = np.array(["low", "mid", "high"])[np.arange(len(labels)) % 3]
    result = _check(labels.assign(label=names), known)
    assert not result.is_binary and set(result.classes) == {"low", "mid", "high"}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: f.drop(columns="label"), "missing column(s) ['label']"),
        (lambda f: f.iloc[0:0], "the labels table is empty"),
        (lambda f: pd.concat([f, f.head(3)]), "3 users appear more than once"),
        (lambda f: f.assign(label=np.where(np.arange(len(f)) < 5, 1, 0)), "too few users per class (need >= 20): class '1': 5"),
        (lambda f: f.assign(label=0), "labels need at least 2 classes"),
        (lambda f: f.assign(label=f["label"] + 0.5), "labels must be class ids"),
        (lambda f: pd.concat([f, pd.DataFrame({"user_id": ["ghost-1", "ghost-2"], "label": [0, 1]})]),
         "2 users are unknown to the feature store: 'ghost-1', 'ghost-2'"),
        (lambda f: f.assign(label_time=pd.Timestamp(AS_OF) - pd.Timedelta(days=45)), "fall outside the feature window"),
        (lambda f: f.assign(label_time=pd.Timestamp(AS_OF) + pd.Timedelta(days=200)), "fall outside the feature window"),
        (lambda f: f.assign(label_time="not a time"), "label_time values are missing or not timestamps"),
    ],
    ids=["missing-column", "empty", "duplicate-users", "too-few-positives", "one-class", "fractional", "unknown-users",
         "label-before-features", "label-after-ttl", "bad-label-time"],
)
def test_bad_labels_are_rejected_with_a_specific_reason(labels, known, corrupt, message):
    with pytest.raises(ScenarioLabelError) as err:
        _check(corrupt(labels.copy()), known)
    assert message in str(err.value)
    assert "nothing was registered" in str(err.value)


def test_every_problem_is_reported_at_once(labels, known):
    bad = pd.concat([labels, labels.head(2), pd.DataFrame({"user_id": ["ghost"], "label": [1]})])
    with pytest.raises(ScenarioLabelError) as err:
        _check(bad, known)
    assert len(err.value.problems) == 2
