"""The evaluation harness: metrics, split hygiene, probes on planted signal, an end-to-end smoke run."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import ks_2samp, norm
from sklearn.metrics import roc_auc_score

from conftest import AS_OF
from qanchor.cli import cli
from qanchor.model import ModelSettings, QAnchor
from qanchor.model.text_encoder import TextEmbeddingCache
from qanchor.scenario import ks_statistic
from training.evaluation.baselines import AggregateFeaturizer, HistoryFeaturizer, most_common, serialise
from training.evaluation.geometry import embedding_geometry
from training.evaluation.harness import (
    EvaluationSettings,
    baseline_tables,
    evaluate,
    population_parts,
    prefix_summaries,
    score_baselines,
    task_labels,
)
from training.evaluation.metrics import bootstrap_difference, bootstrap_mean, roc_auc
from training.evaluation.population import load_population, split_parts
from training.evaluation.probe import Parts, gbdt_probe, logistic_probe
from training.evaluation.report import write_report

#: The two most frequent task labels: the only ones with positives in every part of 300 users.
SMOKE_TASKS = ["mkt_coupon_redeem", "eng_checkin_streak"]


def test_auc_and_ks_agree_with_scikit_learn_and_scipy_including_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + y, 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert ks_statistic(y, scores) == pytest.approx(ks_2samp(scores[y == 1], scores[y == 0]).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.zeros(5), np.arange(5))


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_more_users():
    rng = np.random.default_rng(1)

    def interval(n: int):
        y = rng.integers(0, 2, n)
        return bootstrap_mean([y], [y + rng.normal(size=n)], roc_auc, resamples=300, seed=0)

    small, large = interval(200), interval(5000)
    assert small.low <= small.value <= small.high
    assert (large.high - large.low) < (small.high - small.low) / 3


def test_ks_interval_brackets_the_estimate_despite_the_upward_bias_of_resampled_maxima():
    rng = np.random.default_rng(4)
    y = (rng.random(150) < 0.1).astype(int)
    scores = rng.normal(size=150) + 0.3 * y
    est = bootstrap_mean([y], [scores], ks_statistic, resamples=400, seed=0)
    assert est.low < est.value < est.high


def test_paired_difference_separates_methods_whose_own_intervals_overlap():
    """Two scorers sharing most of their noise: each interval is wide, their paired difference is not."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    shared = rng.normal(size=400)
    better, worse = y + shared, 0.8 * y + shared
    a, b = (bootstrap_mean([y], [s], roc_auc, resamples=300) for s in (better, worse))
    assert a.low < b.high, "the fixture needs overlapping separate intervals"
    diff = bootstrap_difference([y], [better], [worse], roc_auc, resamples=300)
    assert diff.value == pytest.approx(a.value - b.value)
    assert diff.low > 0
    same = bootstrap_difference([y], [better], [better], roc_auc, resamples=50)
    assert same.value == same.low == same.high == 0.0


def test_geometry_tells_a_constant_per_query_from_a_query_aware_embedding():
    rng = np.random.default_rng(5)
    users = rng.normal(size=(200, 1, 32))
    queries = 5 * rng.normal(size=(1, 4, 32))
    blind = embedding_geometry(queries + 0.1 * users)      # the query shifts everyone alike
    aware = embedding_geometry(queries + rng.normal(size=(200, 4, 32)))
    assert blind.mean_user_cosine > 0.9 and blind.user_variance_share < 0.05
    assert blind.query_sensitivity < 0.05  # what remains is each query projecting the same user part
    assert aware.query_sensitivity > 0.9 and aware.mean_user_cosine < blind.mean_user_cosine


def test_history_baseline_reads_kinds_that_fell_off_the_event_sequence(sqlite_store, dataset, spec):
    users = sqlite_store.online(sorted(sqlite_store.known_users())[:60])
    ref = int(pd.Timestamp(AS_OF).timestamp())
    table = HistoryFeaturizer(spec).fit(users).transform(users, [ref] * len(users))
    recent = AggregateFeaturizer(spec).fit(users).transform(users, [ref] * len(users))
    assert not set(recent.columns) & set(table.columns), "the history columns add to the recent ones"
    user = max(users, key=lambda u: u.history["bill"].events)
    row = table.iloc[users.index(user)]
    assert row["bill_hist_events"] == user.history["bill"].events > len(user.modalities["bill"])
    assert row["bill_hist_count_90d"] == user.history["bill"].events or len(user.history["bill"]) == spec.modality("bill").history_kinds


def test_baselines_are_scored_once_per_population_and_the_text_row_is_optional(sqlite_store, dataset, spec):
    population = load_population(sqlite_store, dataset, splits=("train", "val", "test"))
    labels = task_labels(population, SMOKE_TASKS)
    scores = score_baselines(spec, TextEmbeddingCache(), population, labels, text=False)
    assert set(scores) == {"gbdt_aggregates", "gbdt_history"}
    assert all(len(scores[m][t]) == int((population.part == "test").sum()) for m in scores for t in SMOKE_TASKS)


def test_bagged_lightgbm_row_is_the_mean_of_its_seeds_fits(sqlite_store, dataset, spec):
    """One LightGBM fit is a draw of its row and column subsampling; gbdt_seeds averages several."""
    population = load_population(sqlite_store, dataset, splits=("train", "val", "test"))
    labels = task_labels(population, SMOKE_TASKS[:1])
    parts = population_parts(population)
    _, history = baseline_tables(spec, population)
    one = score_baselines(spec, TextEmbeddingCache(), population, labels, text=False)
    bagged = score_baselines(spec, TextEmbeddingCache(), population, labels, text=False, gbdt_seeds=2)
    task, y = next(iter(labels.items()))
    fits = [gbdt_probe(history, y, parts, seed).test_scores for seed in (0, 1)]
    np.testing.assert_allclose(one["gbdt_history"][task], fits[0])
    np.testing.assert_allclose(bagged["gbdt_history"][task], (fits[0] + fits[1]) / 2)
    assert not np.allclose(fits[0], fits[1]), "two seeds subsample differently"


def test_mean_over_tasks_resamples_users_jointly():
    y = np.array([0, 1] * 50)
    est = bootstrap_mean([y, 1 - y], [y.astype(float), (1 - y).astype(float)], roc_auc, resamples=50)
    assert est.value == est.low == est.high == 1.0
    with pytest.raises(ValueError, match="same users"):
        bootstrap_mean([y, y[:10]], [y, y[:10]], roc_auc)


def test_probes_recover_a_planted_signal_at_its_theoretical_auc():
    """x0 = label + N(0, 1): the best possible AUC is Phi(1 / sqrt(2)) = 0.760; the other 15
    dimensions are noise. Both probes must get there on held-out users, and no further."""
    rng = np.random.default_rng(2)
    n = 6000
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 16))
    x[:, 0] += y
    part = split_parts(n, (0.5, 0.25, 0.25), seed=0)
    parts = Parts(*(np.flatnonzero(part == p) for p in ("train", "val", "test")))
    expected = norm.cdf(1 / np.sqrt(2))
    linear = roc_auc(y[parts.test], logistic_probe(x, y, parts).test_scores)
    trees = roc_auc(y[parts.test], gbdt_probe(pd.DataFrame(x), y, parts).test_scores)
    assert linear == pytest.approx(expected, abs=0.03)
    assert trees == pytest.approx(expected, abs=0.04)


def test_split_parts_are_disjoint_and_proportional():
    part = split_parts(1000, (0.5, 0.25, 0.25), seed=3)
    assert {p: int((part == p).sum()) for p in ("train", "val", "test")} == {"train": 500, "val": 250, "test": 250}
    assert np.array_equal(part, split_parts(1000, (0.5, 0.25, 0.25), seed=3))


def test_a_synthetic_population_carries_its_latent_traits_for_the_oracle_row(sqlite_store, dataset):
    population = load_population(sqlite_store, dataset)
    latent = pd.read_parquet(dataset / "latent").set_index("user_id")
    assert population.latent.shape == (len(population), latent.shape[1])
    first = population.users[0].user_id
    assert np.allclose(population.latent[0], latent.loc[first].to_numpy())


def test_population_holds_only_users_the_backbone_was_not_pretrained_on(sqlite_store, dataset):
    population = load_population(sqlite_store, dataset)
    splits = pd.read_parquet(dataset / "splits").set_index("user_id")["split"]
    ids = [u.user_id for u in population.users]
    assert len(set(ids)) == len(ids), "a user appears twice"
    assert set(splits[ids]) <= {"val", "test"}, "pretraining (train split) users leaked into evaluation"
    assert set(population.part) == {"train", "val", "test"}
    assert list(population.labels["user_id"]) == ids


def test_baseline_columns_are_the_same_in_every_process(sqlite_store, dataset, spec, tmp_path):
    """Kinds that tie in frequency at the vocabulary's edge are ranked by name, not by the string
    hash: two processes with different PYTHONHASHSEED build identical baseline tables."""
    users = sqlite_store.online(sorted(sqlite_store.known_users())[:40])
    ref = int(pd.Timestamp(AS_OF).timestamp())
    with (tmp_path / "users.pkl").open("wb") as fh:
        pickle.dump((spec, users, ref), fh)
    script = (
        "import pickle, sys\n"
        "from training.evaluation.baselines import AggregateFeaturizer, HistoryFeaturizer\n"
        "spec, users, ref = pickle.load(open(sys.argv[1], 'rb'))\n"
        "h = HistoryFeaturizer(spec, top_kinds=4).fit(users)\n"
        "a = AggregateFeaturizer(spec, top_kinds=3).fit(users)\n"
        "print(repr((h.vocabulary, a.kinds, list(h.transform(users, [ref] * len(users)).columns))))\n")
    runs = [subprocess.run([sys.executable, "-c", script, str(tmp_path / "users.pkl")], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parents[1],
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")]
    assert runs[0] == runs[1] == runs[2]


def test_vocabulary_ranks_ties_by_name_whatever_order_the_kinds_arrive_in():
    assert most_common(Counter({"b": 2, "c": 3, "a": 2, "d": 1}), 3) == ["c", "a", "b"]
    assert most_common(Counter({"a": 2, "b": 2, "c": 3, "d": 1}), 3) == ["c", "a", "b"]


def test_aggregates_count_events_and_learn_their_vocabulary_from_train_users_only(sqlite_store, dataset, spec):
    population = load_population(sqlite_store, dataset, splits=("train", "val", "test"))
    train = [population.users[i] for i in population.index("train")]
    featurizer = AggregateFeaturizer(spec, top_kinds=5).fit(train)
    table = featurizer.transform(population.users, population.reference_times)
    user = population.users[0]
    assert table.loc[0, "bill_count"] == len(user.modalities["bill"])
    assert table.loc[0, "bill_amount_sum"] == pytest.approx(sum(user.modalities["bill"].numeric["amount"]))
    assert isinstance(table["profile_occupation"].dtype, pd.CategoricalDtype)
    assert set(table["search_top_kind"].cat.categories) == {*featurizer.kinds["search"], "other"}
    assert len(serialise(user, spec)) == 1 + len(spec.event_modalities)


def test_prefix_probe_reads_one_row_of_summary_tokens_per_user_whatever_the_batching(sqlite_store, dataset, spec):
    """The `qanchor_prefix` row's input: [USER], every [MOD_m] and every [HIST_m] token, flattened;
    padding to a batch's longest user must not leak into another user's row."""
    population = load_population(sqlite_store, dataset, splits=("train", "val", "test"))
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    users, times = population.users[:6], population.reference_times[:6]
    one_by_one = prefix_summaries(model, users, times, batch_size=1)
    together = prefix_summaries(model, users, times, batch_size=6)
    encoder = model.network.user_encoder
    tokens = 1 + len(spec.names) + encoder.history_width * len(encoder.history_names)
    assert one_by_one.shape == (6, tokens * model.network.backbone.hidden_size)
    np.testing.assert_allclose(one_by_one, together, atol=1e-5)
    assert not np.allclose(one_by_one[0], one_by_one[1]), "two users, one summary"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_whole_harness_runs_end_to_end_and_writes_its_report(sqlite_store, dataset, spec, tmp_path):
    """Random-init tiny backbone (never pretrained, so every split may be evaluated), two tasks,
    a few tuning steps: checks the plumbing, not the quality. Slow (about 3 min on 2 cores, most
    of it the MiniLM text row); `make test-slow` runs it, the own-data test covers the rest."""
    population = load_population(sqlite_store, dataset, splits=("train", "val", "test"))
    model = QAnchor.build(spec, ModelSettings(), seed=0)
    settings = EvaluationSettings(tasks=SMOKE_TASKS, tune_steps=4, resamples=20)
    result = evaluate(model, population, settings, progress=False)
    methods = {r["method"] for r in result.rows}
    assert methods == {"oracle", "gbdt_aggregates", "gbdt_history", "minilm_text", "qanchor_prefix", "static_query", "qanchor_query",
                       "qanchor_paraphrase", "qanchor_prompt", "qanchor_prompt_proto"}
    mean_auc = {s["method"]: s["mean_auc"] for s in result.summary}
    assert mean_auc["oracle"] > 0.6, "the latent traits the labels were drawn from predict them"
    pairs = {(c["method"], c["versus"]) for c in result.comparisons}
    assert ("qanchor_query", "static_query") in pairs and ("qanchor_prompt_proto", "qanchor_prompt") in pairs
    assert any(versus in ("gbdt_aggregates", "gbdt_history", "minilm_text") for _, versus in pairs)
    for c in result.comparisons:
        assert c["auc_diff_low"] <= c["auc_diff"] <= c["auc_diff_high"]
    assert result.geometry["queries"] == len(SMOKE_TASKS) and 0.0 <= result.geometry["user_variance_share"] <= 1.0
    for row in result.rows + result.summary:
        for key in ("auc", "mean_auc"):
            if key in row:
                assert 0.0 <= row[f"{key}_low"] <= row[key] <= row[f"{key}_high"] <= 1.0
    files = write_report(result, tmp_path / "report", {"backbone": "random tiny"})
    names = {f.name for f in files}
    assert {"results.json", "report.md", "auc_by_task.png", f"embeddings_{SMOKE_TASKS[0]}_tsne.png"} <= names
    payload = json.loads((tmp_path / "report" / "results.json").read_text())
    assert payload["test_users"] == int((population.part == "test").sum())
    report = (tmp_path / "report" / "report.md").read_text()
    assert "| mkt_coupon_redeem" in report and "Paired differences" in report and "query sensitivity" in report


def test_cli_refuses_an_unknown_task_before_doing_any_work(sqlite_store, dataset, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["evaluate", "--backbone", "champion", "--repo", str(sqlite_store.repo),
                                      "--dataset", str(dataset), "--tasks", "churn_next_week", "--out", str(out)])
    assert result.exit_code == 2
    assert "unknown tasks ['churn_next_week']" in result.output
    assert not out.exists()
