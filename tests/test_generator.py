"""The synthetic UserU generator: deterministic, labelled from the future window, checkable."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from conftest import AS_OF
from qanchor.synthetic.generator import GeneratorConfig, generate, generate_chunk, read_table
from qanchor.synthetic.tasks import TASK_NAMES, TASKS, TRAIT_TASKS, label_from_future
from qanchor.synthetic.uqa import RECENCY_TOPICS, TOPICS, check_answer, check_dataset, user_facts

TABLES = ("events", "profiles", "future_events", "labels", "d_future", "d_uqa", "splits")


def test_same_seed_gives_identical_tables_and_another_seed_does_not(tmp_path):
    a = generate(GeneratorConfig(users=120, seed=5, chunk_users=50), tmp_path / "a", progress=False)
    b = generate(GeneratorConfig(users=120, seed=5, chunk_users=50), tmp_path / "b", progress=False)
    generate(GeneratorConfig(users=120, seed=6, chunk_users=50), tmp_path / "c", progress=False)
    assert a["rows"] == b["rows"]
    for name in TABLES:
        pd.testing.assert_frame_equal(read_table(tmp_path / "a", name), read_table(tmp_path / "b", name))
    assert not read_table(tmp_path / "a", "events").equals(read_table(tmp_path / "c", "events"))


def test_output_layout_and_manifest(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["rows"]["users"] == 300
    assert sorted(p.name for p in (dataset / "events").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    assert {t["group"] for t in manifest["tasks"]} == {"Engagement", "Risk", "Marketing"}
    events = read_table(dataset, "events")
    assert set(events["modality"]) == {"bill", "mini", "spm", "app", "search"}
    window_start = pd.Timestamp(manifest["config"]["as_of"]) - pd.Timedelta(days=90)
    assert events["event_time"].between(window_start, pd.Timestamp(manifest["config"]["as_of"]), inclusive="left").all()
    assert events.loc[events["modality"] == "bill", "amount"].notna().all()
    assert events.loc[events["modality"] != "bill", "amount"].isna().all()


def test_refuses_to_overwrite_existing_output(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(GeneratorConfig(users=10), tmp_path / "out", progress=False)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_labels_are_read_back_from_the_future_window(dataset):
    future = read_table(dataset, "future_events")
    labels = read_table(dataset, "labels")
    recomputed = label_from_future(labels["user_id"].to_numpy(), future)
    pd.testing.assert_frame_equal(recomputed, labels.drop(columns="label_time"))
    observed = read_table(dataset, "events")
    markers = {t.marker_text for t in TRAIT_TASKS}
    assert not observed["text"].isin(markers).any(), "task markers must only appear in the future window"


def test_habit_tasks_need_the_old_end_of_the_window(dataset):
    """A quarterly plan recurs in the next 30 days exactly when its one payment in the window was
    made 60-90 days ago, so its evidence is the OLDEST events, the first a short sequence drops."""
    observed, labels = read_table(dataset, "events"), read_table(dataset, "labels").set_index("user_id")
    as_of = labels["label_time"].iloc[0]
    plans = observed[observed["text"].str.endswith(", quarterly plans")]
    age = (as_of - plans.groupby("user_id")["event_time"].max()).dt.days
    renew = labels.loc[age.index, "mkt_plan_renewal"]
    assert renew[age >= 62].mean() > 0.7 and renew[age <= 55].mean() < 0.1
    refills = observed[observed["text"].str.endswith(", refills")].groupby("user_id").size()
    assert (refills >= 2).any(), "refill habits recur inside the window"


def test_positive_rates_match_documented_targets_on_20k_users():
    config = GeneratorConfig(users=20_000, seed=2024)
    labels = pd.concat([generate_chunk(config, i, i * 5_000, 5_000).labels for i in range(4)])
    for task in TASKS:
        rate = labels[task.name].mean()
        assert 0.03 <= task.target_rate <= 0.40
        assert abs(rate - task.target_rate) <= 0.02, f"{task.name}: {rate:.3f} vs documented {task.target_rate:.3f}"


def test_tasks_depend_on_different_traits():
    """No two tasks share a trait direction: pairwise cosine of trait weight vectors stays below 0.8."""
    from qanchor.synthetic.catalog import TRAITS

    vectors = np.array([[t.weights.get(name, 0.0) for name in TRAITS] for t in TRAIT_TASKS])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = vectors @ vectors.T
    np.fill_diagonal(cosine, 0.0)
    assert cosine.max() < 0.8
    assert len(TASK_NAMES) == 12


def test_every_uqa_answer_is_consistent_with_the_users_data(dataset):
    facts = user_facts(read_table(dataset, "events"), read_table(dataset, "profiles"), pd.Timestamp(AS_OF))
    uqa = read_table(dataset, "d_uqa")
    assert len(set(uqa["topic"])) >= 10
    assert check_dataset(uqa, facts).empty


@pytest.mark.parametrize(
    ("topic", "corrupt"),
    [
        ("spending", lambda a: re.sub(r"^[\d.]+", lambda m: f"{float(m.group()) + 5:.2f}", a)),
        ("travel", lambda a: "No travel payments in the last 90 days." if a.startswith("Yes") else "Yes, 3 travel payments in the last 90 days."),
        ("life_stage", lambda a: a.replace("tier-", "tier-9")),
        ("top_category", lambda a: "wealth: 1 of 1 payments." if not a.startswith("wealth") else "dining: 1 of 1 payments."),
        ("search", lambda a: a + " Also loves opera."),
        ("plan_recency", lambda a: re.sub(r"^\d+", lambda m: str(int(m.group()) + 7), a)
         if a[0].isdigit() else "12 days ago (1 payments in the last 90 days)."),
    ],
)
def test_uqa_check_catches_a_corrupted_answer(dataset, topic, corrupt):
    facts = user_facts(read_table(dataset, "events"), read_table(dataset, "profiles"), pd.Timestamp(AS_OF))
    row = read_table(dataset, "d_uqa").query("topic == @topic").iloc[0]
    assert check_answer(topic, row.answer, facts.loc[row.user_id]).ok
    result = check_answer(topic, corrupt(row.answer), facts.loc[row.user_id])
    assert not result.ok and result.reason


def test_d_future_summarises_next_window_per_user_with_diversity(dataset):
    d_future = read_table(dataset, "d_future")
    assert d_future["user_id"].is_unique and len(d_future) == 300
    assert d_future["query"].nunique() == 1
    multi = d_future["answer"].str.count(";") >= 2
    assert multi.mean() > 0.8
    labels = read_table(dataset, "labels").set_index("user_id")
    overdue = labels.index[labels["risk_overdue"] == 1]
    answers = d_future.set_index("user_id")["answer"]
    assert answers.loc[overdue].str.contains("late fee").all()


def test_every_user_gets_one_recency_question_about_scheduled_payments(dataset):
    """The old end of the window must be asked about, or pretraining never learns to keep it."""
    uqa = read_table(dataset, "d_uqa")
    recency = uqa[uqa["topic"].isin([t.name for t in RECENCY_TOPICS])]
    assert recency["user_id"].is_unique and len(recency) == 300
    answered = recency[~recency["answer"].str.startswith("No ")]
    assert 0.2 < len(answered) / len(recency) < 0.8
    assert answered["answer"].str.match(r"^\d+ days ago").all()


def test_d_future_names_each_scheduled_payment_of_the_next_window(dataset):
    future = read_table(dataset, "future_events")
    planned = set(future.loc[future["category"] == "quarterly plans", "user_id"])
    answers = read_table(dataset, "d_future").set_index("user_id")["answer"]
    assert planned and answers.loc[sorted(planned)].str.contains("notably, paid [0-9.]+ at .*, quarterly plans").all()


def test_future_kind_questions_ask_one_kind_each_and_answer_from_the_future_window(tmp_path):
    """Opt-in yes/no D_future questions: the query names the behaviour, the answer is read back
    from that user's future events, half yes and half no, and nothing else in the dataset moves."""
    plain = generate(GeneratorConfig(users=200, seed=3, chunk_users=100), tmp_path / "plain", progress=False)
    asked = generate(GeneratorConfig(users=200, seed=3, chunk_users=100, future_questions_per_user=3),
                     tmp_path / "asked", progress=False)
    for name in ("events", "future_events", "labels", "d_uqa", "splits"):
        pd.testing.assert_frame_equal(read_table(tmp_path / "plain", name), read_table(tmp_path / "asked", name))
    assert asked["rows"]["d_future"] == plain["rows"]["d_future"] + 3 * 200

    future = read_table(tmp_path / "asked", "future_events")
    d_future = read_table(tmp_path / "asked", "d_future")
    kinds = d_future[d_future["query"].str.startswith("Will this user")]
    assert (kinds.groupby("user_id")["query"].nunique() == 3).all()
    assert 0.35 < kinds["answer"].str.startswith("Yes").mean() < 0.65
    refill = kinds[kinds["query"] == "Will this user pay for refills in the next 30 days?"]
    buyers = set(future.loc[future["category"] == "refills", "user_id"])
    assert len(refill) and (refill["answer"].str.startswith("Yes") == refill["user_id"].isin(buyers)).all()
    overdue = kinds[kinds["query"].str.contains('"paid late fee for overdue repayment"')]
    late = set(future.loc[future["category"] == "task:risk_overdue", "user_id"])
    assert len(overdue) and (overdue["answer"].str.startswith("Yes") == overdue["user_id"].isin(late)).all()


def test_a_summary_by_frequency_stops_naming_every_label_and_changes_nothing_else(tmp_path):
    """With the markers named, the generic question's answer lists each downstream label, so it is
    trained on every task at once; ranked by frequency (as a corpus from logs alone is written)
    a marker is named only where it is among the user's most frequent future behaviours."""
    named = generate(GeneratorConfig(users=200, seed=3, chunk_users=100), tmp_path / "named", progress=False)
    ranked = generate(GeneratorConfig(users=200, seed=3, chunk_users=100, summary_names_markers=False),
                      tmp_path / "ranked", progress=False)
    for name in ("events", "future_events", "labels", "d_uqa", "splits"):
        pd.testing.assert_frame_equal(read_table(tmp_path / "named", name), read_table(tmp_path / "ranked", name))
    assert ranked["rows"]["d_future"] == named["rows"]["d_future"]
    assert ranked["config"]["summary_names_markers"] is False

    labels = read_table(tmp_path / "ranked", "labels").set_index("user_id")
    overdue = labels.index[labels["risk_overdue"] == 1]
    answers = {kind: read_table(tmp_path / kind, "d_future").set_index("user_id")["answer"] for kind in ("named", "ranked")}
    assert answers["named"].loc[overdue].str.contains("late fee").all()
    assert answers["ranked"].loc[overdue].str.contains("late fee").mean() < 0.5
    assert not answers["ranked"].str.contains("notably|task:").any()
    assert answers["ranked"].str.count(";").ge(2).mean() > 0.8


def test_future_questions_per_user_is_bounded():
    with pytest.raises(ValueError, match="future_questions_per_user"):
        GeneratorConfig(users=10, future_questions_per_user=17)


def test_splits_partition_users(dataset):
    splits = read_table(dataset, "splits")
    assert splits["user_id"].is_unique
    assert set(splits["split"]) == {"train", "val", "test"}
    assert 0.7 < (splits["split"] == "train").mean() < 0.9


def test_topics_cover_at_least_ten_life_areas():
    assert len(TOPICS) >= 10
