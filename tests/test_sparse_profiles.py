"""Sparse profiles: a spec can declare profile fields nullable, and users without a profile row
still import, label, train and score; the model reads missing values explicitly."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import AS_OF, materialized_store
from feature_repo.ingest import ImportConfig, import_data
from monitoring.validation import DataValidationError
from qanchor.model import QAnchor
from qanchor.model.batch import MISSING_PROFILE_VALUE, profile_texts
from qanchor.modality_spec import load_spec
from training.pretrain import PretrainConfig, pretrain
from training.scenario_labels import validate_labels

NO_PROFILE_ROW = 12


@pytest.fixture(scope="module")
def sparse_spec(tmp_path_factory):
    from importlib import resources

    raw = yaml.safe_load(resources.files("qanchor.specs").joinpath("default.yaml").read_text())
    (profile,) = [m for m in raw["modalities"] if m.get("kind") == "profile"]
    for field in profile["fields"]:
        if field["name"] in ("age", "gender", "income_monthly"):
            field["nullable"] = True
    path = tmp_path_factory.mktemp("spec") / "sparse.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(path)


@pytest.fixture(scope="module")
def sparse_profiles(dataset, tmp_path_factory):
    """Two thirds of users without age and gender, a third without income, and 12 users with no row at all."""
    profiles = pd.read_parquet(dataset / "profiles").reset_index(drop=True)
    rng = np.random.default_rng(3)
    profiles.loc[rng.random(len(profiles)) < 2 / 3, ["age", "gender"]] = None
    profiles.loc[rng.random(len(profiles)) < 1 / 3, "income_monthly"] = np.nan
    profiles["age"] = profiles["age"].astype("Int64")
    missing_users = profiles["user_id"].iloc[:NO_PROFILE_ROW].tolist()
    path = tmp_path_factory.mktemp("sparse") / "profiles.parquet"
    profiles.iloc[NO_PROFILE_ROW:].to_parquet(path, index=False)
    return path, profiles.iloc[NO_PROFILE_ROW:], missing_users


@pytest.fixture(scope="module")
def sparse_store(dataset, sparse_spec, sparse_profiles, tmp_path_factory):
    path, _, _ = sparse_profiles
    out = tmp_path_factory.mktemp("sparse_features") / "features"
    summary = import_data(ImportConfig(events=dataset / "events", profiles=path, out=out, spec=sparse_spec,
                                       as_of=AS_OF), progress=False)
    return summary, materialized_store(out, tmp_path_factory.mktemp("sparse_repo") / "store")


def test_the_default_spec_still_requires_every_field(dataset, spec, sparse_profiles, tmp_path):
    path, _, _ = sparse_profiles
    with pytest.raises(DataValidationError, match=r"expect_column_values_to_not_be_null\(age\)"):
        import_data(ImportConfig(events=dataset / "events", profiles=path, out=tmp_path / "f", spec=spec, as_of=AS_OF),
                    progress=False)


def test_sparse_profiles_import_and_the_report_counts_what_is_missing(sparse_store, sparse_profiles):
    summary, store = sparse_store
    _, profiles, missing_users = sparse_profiles
    report = next(r for r in summary.reports if r.table == "profiles")
    assert report.success
    assert report.counts["rows_missing_age"] == int(profiles["age"].isna().sum()) > 0
    assert report.counts["rows_missing_income_monthly"] == int(profiles["income_monthly"].isna().sum()) > 0
    assert report.counts["users_without_profile_row"] == NO_PROFILE_ROW
    assert f"{NO_PROFILE_ROW} users without profile row" in report.summary()
    assert set(missing_users) <= store.known_users()


def test_a_user_without_a_profile_row_reads_as_not_provided_online_and_point_in_time(sparse_store, sparse_spec,
                                                                                        sparse_profiles):
    _, store = sparse_store
    _, profiles, missing_users = sparse_profiles
    (online,) = store.online(missing_users[:1])
    (offline,) = store.features_at(missing_users[:1], [pd.Timestamp(AS_OF)])
    for user in (online, offline):
        assert not user.is_empty and all(v is None for v in user.profile.values())
        assert profile_texts(sparse_spec.profile, user.profile)[0] == f"age: {MISSING_PROFILE_VALUE}"
    partial = profiles.loc[profiles["income_monthly"].isna() & profiles["age"].notna(), "user_id"].iloc[0]
    (user,) = store.features_at([partial], [pd.Timestamp(AS_OF)])
    assert user.profile["income_monthly"] is None and user.profile["age"] is not None


def test_sparse_users_are_labelled_trained_on_and_scored(sparse_store, sparse_profiles, dataset, tmp_path):
    _, store = sparse_store
    _, _, missing_users = sparse_profiles
    labels = pd.DataFrame({"user_id": missing_users + ["u_not_imported"], "label": [0, 1] * (NO_PROFILE_ROW // 2) + [1]})
    with pytest.raises(ValueError, match="u_not_imported"):
        validate_labels(labels, store.known_users(), *store.label_window())
    validated = validate_labels(labels.iloc[:-1], store.known_users(), *store.label_window(), min_per_class=5)
    assert set(validated.frame["user_id"]) == set(missing_users)

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path}/mlruns.db"
    try:
        summary = pretrain(PretrainConfig.model_validate({
            "data": {"dataset": str(dataset), "feature_repo": str(store.repo), "val_examples": 16, "eval_batch_size": 8},
            "optim": {"steps": 3, "batch_size": 8, "warmup_steps": 1},
            "tracking": {"uri": f"sqlite:///{tmp_path}/mlruns.db", "register_model": False},
            "output_dir": str(tmp_path / "run")}),
            progress=False)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    model = QAnchor.from_pretrained(summary["model_dir"])
    users = store.online(missing_users[:2])
    vectors = model.embed(users, ["will this user repay late?"], reference_time=store.reference_time)
    assert vectors.shape[:2] == (2, 1) and np.isfinite(vectors).all()
