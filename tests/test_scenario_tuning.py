"""Prompt tuning on a frozen model: it changes only prompt/prototype parameters and beats the
query-only version of the same scenario on a task with planted signal."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import AS_OF
from qanchor.model import ModelSettings, QAnchor
from training.scenario_labels import validate_labels
from training.scenario_tuning import TuningSettings, load_labelled_users, tune


@pytest.fixture(scope="module")
def travellers(dataset, sqlite_store):
    """Planted signal: label 1 iff the user paid for travel in the 90 days the features cover."""
    events = pd.read_parquet(dataset / "events", columns=["user_id", "modality", "category"])
    paid = set(events.query("modality == 'bill' and category == 'travel'")["user_id"])
    users = pd.read_parquet(dataset / "profiles", columns=["user_id"])["user_id"]
    raw = pd.DataFrame({"user_id": users, "label": users.isin(paid).astype(int)})
    as_of = pd.Timestamp(AS_OF)
    labels = validate_labels(raw, sqlite_store.known_users(), as_of - pd.Timedelta(days=30), as_of,
                             pd.Timedelta(days=90))
    features, times = load_labelled_users(sqlite_store, labels)
    return features, times, labels.frame["class_index"].to_numpy()


def test_tuning_beats_query_only_and_leaves_the_backbone_untouched(spec, travellers):
    features, times, classes = travellers
    assert 0.2 < classes.mean() < 0.8
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    result = tune(model, features, times, classes, "has this user paid for travel recently?",
                  TuningSettings(tokens=4, steps=60, batch_size=32, eval_every=10, patience=3, lr=1e-2))
    after = model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "tuning must not move any model weight"
    assert result.prompt.prompt.shape == (4, model.network.backbone.hidden_size)
    assert result.metrics["val_auc"] > result.metrics["query_only_val_auc"], result.metrics
    assert 0.0 <= result.metrics["val_ks"] <= 1.0
    assert len(result.history) >= 1


def test_a_prompt_that_loses_to_query_only_is_never_returned(spec, travellers):
    """With a learning rate that wrecks the prompt, tuning falls back to its query-only start."""
    features, times, classes = travellers
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    result = tune(model, features, times, classes, "has this user paid for travel recently?",
                  TuningSettings(tokens=4, steps=20, batch_size=32, eval_every=10, patience=1, lr=50.0))
    assert result.chosen == "query_only", result.metrics
    assert result.metrics["tuned_val_auc"] <= result.metrics["query_only_val_auc"]
    assert result.metrics["val_auc"] == pytest.approx(result.metrics["query_only_val_auc"])
    assert result.prompt.prompt is None, "the shipped state carries no soft-prompt vectors"


def test_a_validation_split_with_few_positives_is_flagged(spec, travellers):
    """60 users leave 15 for validation: too few of either class to trust its AUC."""
    features, times, classes = travellers
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    result = tune(model, features[:60], times[:60], classes[:60], "has this user paid for travel recently?",
                  TuningSettings(tokens=2, steps=10, batch_size=16, eval_every=5))
    rarest = int(result.metrics["val_rarest_class_count"])
    assert rarest < 20
    assert result.warnings and f"only {rarest} users of its rarest class (< 20)" in result.warnings[0]
