"""Scenario registration in MLflow: tuned and query-only scenarios, listing, archiving, and
bad requests that leave the registry untouched."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from qanchor.cli import cli
from training.pretrain import PretrainConfig, pretrain
from training.scenario_labels import ScenarioLabelError, validate_labels
from training.registry import ScenarioError, list_scenarios, load_model, load_scenario, show_scenario
from training.scenario_registry import register_scenario
from training.scenario_tuning import TuningSettings, load_labelled_users, tune


@pytest.fixture(scope="module")
def registry(tmp_path_factory, dataset, sqlite_store):
    """A tracking store with a (briefly) pretrained backbone registered as `challenger`."""
    tmp = tmp_path_factory.mktemp("scenario_registry")
    uri = f"sqlite:///{tmp}/mlruns.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        pretrain(PretrainConfig.model_validate({
            "data": {"dataset": str(dataset), "feature_repo": str(sqlite_store.repo), "val_examples": 32,
                     "eval_batch_size": 16},
            "optim": {"steps": 2, "batch_size": 8, "warmup_steps": 1},
            "tracking": {"uri": uri}, "output_dir": str(tmp / "run")}), progress=False)
        yield uri
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="module")
def travel_labels(dataset) -> pd.DataFrame:
    events = pd.read_parquet(dataset / "events", columns=["user_id", "modality", "category"])
    paid = set(events.query("modality == 'bill' and category == 'travel'")["user_id"])
    users = pd.read_parquet(dataset / "profiles", columns=["user_id"])["user_id"]
    return pd.DataFrame({"user_id": users, "label": users.isin(paid).astype(int)})


def _versions(uri: str, name: str) -> int:
    return len(MlflowClient(uri).search_model_versions(f"name='qanchor-scenario-{name}'"))


def test_tuned_and_query_only_scenarios_are_registered_beside_their_backbone(registry, sqlite_store, travel_labels):
    tuned = register_scenario("travel_buyers", "has this user paid for travel recently?", sqlite_store, travel_labels,
                              backbone="challenger", settings=TuningSettings(tokens=2, steps=6, batch_size=16, eval_every=3))
    zero = register_scenario("night_owls", "is this user active late at night?", sqlite_store, backbone="challenger")
    assert not tuned.zero_shot and zero.zero_shot
    assert {"val_auc", "val_ks", "query_only_val_auc"} <= set(tuned.metrics)
    version = MlflowClient(registry).get_model_version("qanchor-scenario-travel_buyers", tuned.version)
    assert version.tags["backbone_version"] == tuned.backbone_version == "1"
    assert version.tags["state"] == tuned.state
    shown = show_scenario("travel_buyers")
    assert shown["classes"] == ["0", "1"] and shown["tokens"] == (2 if tuned.state == "tuned" else 0)
    assert {r.name for r in list_scenarios()} == {"travel_buyers", "night_owls"}
    assert show_scenario("night_owls")["zero_shot"] is True


def test_archive_hides_a_version_from_the_list(registry, sqlite_store):
    register_scenario("to_archive", "anything?", sqlite_store, backbone="challenger")
    result = CliRunner().invoke(cli, ["scenario", "archive", "--name", "to_archive", "--version", "1"])
    assert result.exit_code == 0, result.output
    assert "to_archive" not in {r.name for r in list_scenarios()}
    assert "to_archive" in {r.name for r in list_scenarios(include_archived=True)}


@pytest.mark.parametrize(
    ("name", "query", "error", "message"),
    [
        ("Bad Name", "q?", ScenarioError, "must match"),
        ("ok_name", "", ScenarioError, "query must be"),
    ],
)
def test_bad_requests_register_nothing(registry, sqlite_store, name, query, error, message):
    with pytest.raises(error, match=message):
        register_scenario(name, query, sqlite_store, backbone="challenger")
    assert _versions(registry, "ok_name") == 0


def test_bad_labels_register_nothing(registry, sqlite_store, travel_labels):
    bad = pd.concat([travel_labels, travel_labels.head(2)])
    with pytest.raises(ScenarioLabelError, match="appear more than once"):
        register_scenario("dupes", "q?", sqlite_store, bad, backbone="challenger")
    assert _versions(registry, "dupes") == 0


def _a_losing_tuning(sqlite_store, labels: pd.DataFrame) -> TuningSettings:
    """Settings under which tuning on `labels` loses to its query-only start (found by trying seeds).

    Tuning is deterministic for a seed, so `register_scenario` with these settings repeats it.
    """
    model = load_model("challenger")
    validated = validate_labels(labels, sqlite_store.known_users(), *sqlite_store.label_window())
    users, times = load_labelled_users(sqlite_store, validated)
    for seed in range(12):
        settings = TuningSettings(tokens=2, steps=10, batch_size=16, eval_every=5, patience=1, seed=seed)
        if tune(model, users, times, validated.frame["class_index"].to_numpy(), "q?", settings).chosen == "query_only":
            return settings
    raise AssertionError("no seed in 12 lost on coin-flip labels; the selection rule is suspect")


def test_a_tuning_without_gain_is_shipped_as_query_only_or_refused(registry, sqlite_store, travel_labels):
    """On coin-flip labels a tuned prompt often loses on validation: then the query-only state is
    registered, or nothing with require_gain, and the refused attempt stays in MLflow as a
    FAILED run saying why."""
    noise = travel_labels.assign(label=np.random.default_rng(0).integers(0, 2, len(travel_labels)))
    losing = _a_losing_tuning(sqlite_store, noise)
    fallback = register_scenario("no_gain", "q?", sqlite_store, noise, backbone="challenger", settings=losing)
    assert fallback.state == "query_only" and show_scenario("no_gain")["tokens"] == 0
    assert fallback.metrics["val_auc"] == fallback.metrics["query_only_val_auc"] >= fallback.metrics["tuned_val_auc"]

    with pytest.raises(ScenarioError, match="did not beat the query-only state"):
        register_scenario("no_gain", "q?", sqlite_store, noise, backbone="challenger", settings=losing,
                          require_gain=True)
    assert _versions(registry, "no_gain") == 1, "the refused attempt registered nothing"
    client = MlflowClient(registry)
    experiment = client.get_experiment_by_name("qanchor-scenario-no_gain")
    (refused,) = client.search_runs([experiment.experiment_id], "attributes.status = 'FAILED'")
    assert "nothing registered" in refused.data.tags["refused"]


def test_unknown_backbone_is_refused(registry, sqlite_store):
    with pytest.raises(ScenarioError, match="no version or alias 'gold'"):
        register_scenario("whatever", "q?", sqlite_store, backbone="gold")


def test_model_embeds_and_scores_with_a_registered_scenario(registry, sqlite_store, dataset, travel_labels):
    from qanchor.scenario import ScenarioMismatchError

    if "travel_buyers" not in {r.name for r in list_scenarios()}:
        register_scenario("travel_buyers", "has this user paid for travel recently?", sqlite_store, travel_labels,
                          backbone="challenger", settings=TuningSettings(tokens=2, steps=6, batch_size=16, eval_every=3))
    model = load_model("challenger")
    assert model.registry_version == "1"
    travel = load_scenario("travel_buyers")
    assert not torch.equal(travel.prompt.whitening, torch.eye(128)), "the scenario ships its fitted scoring space"
    users = sqlite_store.online(pd.read_parquet(dataset / "profiles")["user_id"].head(3).tolist())
    probabilities = model.score(users, travel)
    assert probabilities.shape == (3, 2)
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5
    with_prompt = model.embed(users, scenario=travel)
    plain = model.embed(users, ["has this user paid for travel recently?"])
    assert with_prompt.shape == plain.shape == (3, 1, 128)
    if travel.prompt.prompt is None:  # the query-only state won on validation: the scenario is its query
        assert np.allclose(with_prompt, plain, atol=1e-6)
    else:
        assert abs(with_prompt - plain).max() > 1e-4, "the soft prompt must change the embedding"
    model.registry_version = "2"
    with pytest.raises(ScenarioMismatchError, match="tuned on backbone v1"):
        model.score(users, travel)
