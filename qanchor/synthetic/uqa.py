"""D_uqa: grounded questions about a user's 90 days, with answers that can be checked.

Every answer is rendered from *facts* computed from the user's observed events and profile.
The same templates double as parsers: `check_answer` matches an answer against its topic's
templates, re-derives the facts from the raw tables and verifies every claim (each number,
category and yes/no branch). A corrupted answer fails the check.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from qanchor.synthetic.events import display

_PERIODS = (("night", 0, 5), ("morning", 5, 12), ("afternoon", 12, 18), ("evening", 18, 24))


@dataclass(frozen=True)
class Variant:
    """One way to answer: valid only when `when(facts)` holds."""

    template: str
    when: Callable[[pd.Series], bool]


@dataclass(frozen=True)
class Topic:
    name: str
    question: str
    variants: tuple[Variant, ...]


def _always(_: pd.Series) -> bool:
    return True


def _positive(key: str) -> Callable[[pd.Series], bool]:
    return lambda f: f[key] > 0


def _zero(key: str) -> Callable[[pd.Series], bool]:
    return lambda f: f[key] == 0


TOPICS: tuple[Topic, ...] = (
    Topic("spending", "How much has this user spent in the last 90 days?", (
        Variant("{total_spend:.2f} across {n_bill} payments.", _always),)),
    Topic("top_category", "What does this user spend on most often?", (
        Variant("{top_bill_category}: {top_bill_count} of {n_bill} payments.", _positive("n_bill")),
        Variant("No payments in the last 90 days.", _zero("n_bill")))),
    Topic("travel", "Has this user paid for travel recently?", (
        Variant("Yes, {n_travel_bill} travel payments in the last 90 days.", _positive("n_travel_bill")),
        Variant("No travel payments in the last 90 days.", _zero("n_travel_bill")))),
    Topic("borrowing", "Does this user show signs of borrowing?", (
        Variant("Yes: {n_credit_bill} credit payments and {n_credit_search} credit-related searches.",
                lambda f: f["n_credit_bill"] + f["n_credit_search"] > 0),
        Variant("No credit payments or credit-related searches.",
                lambda f: f["n_credit_bill"] + f["n_credit_search"] == 0))),
    Topic("investing", "Does this user use wealth-management services?", (
        Variant("Yes: {n_wealth} wealth events across mini-programs, pages and apps.", _positive("n_wealth")),
        Variant("No wealth-management activity.", _zero("n_wealth")))),
    Topic("food_delivery", "How often does this user order food delivery?", (
        Variant("{n_food_bill} food delivery payments in the last 90 days.", _always),)),
    Topic("gaming", "Does this user play mobile games?", (
        Variant("Yes, {n_game_apps} entertainment apps installed.", _positive("n_game_apps")),
        Variant("No entertainment apps installed.", _zero("n_game_apps")))),
    Topic("health", "Has this user looked for health services?", (
        Variant("Yes: {n_health} health searches and mini-program visits.", _positive("n_health")),
        Variant("No health searches or mini-program visits.", _zero("n_health")))),
    Topic("apps", "How many apps has this user installed?", (
        Variant("{n_app} apps, mostly {top_app_category}.", _positive("n_app")),
        Variant("No apps recorded.", _zero("n_app")))),
    Topic("search", "What does this user search for most?", (
        Variant("Mostly {top_search_category} ({top_search_count} of {n_search} searches).", _positive("n_search")),
        Variant("No searches in the last 90 days.", _zero("n_search")))),
    Topic("life_stage", "What is this user's life stage?", (
        Variant("A {age}-year-old {occupation} in a tier-{city_tier} city.", _always),)),
    Topic("mobility", "How does this user get around?", (
        Variant("{n_transport} transport payments and mini-program visits in the last 90 days.", _always),)),
    Topic("active_time", "When is this user most active?", (
        Variant("Mostly in the {active_period} ({active_period_count} of {n_events} events).", _positive("n_events")),
        Variant("No recorded activity.", _zero("n_events")))),
)
#: Questions about WHEN scheduled payments happened (habits.py): the answers live at the old end
#: of the window, which the topics above, all about tastes and totals, never ask for. A
#: pretraining objective that never asks about recency cannot teach the prefix to keep it.
RECENCY_TOPICS: tuple[Topic, ...] = (
    Topic("refill_recency", "When did this user last buy a refill product, and how often?", (
        Variant("{refill_days_ago} days ago; {n_refill} refill purchases in the last 90 days, "
                "about {refill_gap_days} days apart.", lambda f: f["n_refill"] >= 2),
        Variant("{refill_days_ago} days ago, the only refill purchase in the last 90 days.",
                lambda f: f["n_refill"] == 1),
        Variant("No refill purchases in the last 90 days.", _zero("n_refill")))),
    Topic("plan_recency", "When did this user last pay a quarterly plan?", (
        Variant("{plan_days_ago} days ago ({n_plan} payments in the last 90 days).", _positive("n_plan")),
        Variant("No quarterly plan payments in the last 90 days.", _zero("n_plan")))),
)
TOPIC_BY_NAME = {t.name: t for t in (*TOPICS, *RECENCY_TOPICS)}


def _top(events: pd.DataFrame, mask: pd.Series, users: pd.Index) -> tuple[pd.Series, pd.Series]:
    """Most frequent category per user (ties broken alphabetically) and its count."""
    counts = events[mask].groupby(["user_id", "category"]).size().rename("n").reset_index()
    counts = counts.sort_values(["user_id", "n", "category"], ascending=[True, False, True])
    best = counts.drop_duplicates("user_id").set_index("user_id")
    return (best["category"].map(display).reindex(users).fillna(""),
            best["n"].reindex(users).fillna(0).astype(np.int64))


def _recency(events: pd.DataFrame, mask: pd.Series, users: pd.Index, as_of: pd.Timestamp) -> tuple[pd.Series, pd.Series]:
    """Whole days since the last matching event, and the mean whole-day gap between them (0 if < 2)."""
    times = events.loc[mask, ["user_id", "event_time"]]
    last = times.groupby("user_id")["event_time"].max().reindex(users)
    first = times.groupby("user_id")["event_time"].min().reindex(users)
    n = times.groupby("user_id").size().reindex(users).fillna(0)
    days_ago = ((as_of - last).dt.total_seconds() // 86_400).fillna(0).astype(np.int64)
    gap = ((last - first).dt.total_seconds() / 86_400 / (n - 1).where(n > 1)).round().fillna(0).astype(np.int64)
    return days_ago, gap


def user_facts(events: pd.DataFrame, profiles: pd.DataFrame, as_of: pd.Timestamp) -> pd.DataFrame:
    """Facts per user (index user_id) from observation-window events (with `category`) and profiles;
    recency is counted back from `as_of`."""
    users = pd.Index(profiles["user_id"], name="user_id")
    mod, cat = events["modality"], events["category"]

    def count(mask: pd.Series) -> pd.Series:
        return events[mask].groupby("user_id").size().reindex(users).fillna(0).astype(np.int64)

    bill = mod == "bill"
    facts = pd.DataFrame(index=users)
    facts["n_bill"] = count(bill)
    facts["total_spend"] = events[bill].groupby("user_id")["amount"].sum().reindex(users).fillna(0.0).round(2)
    facts["top_bill_category"], facts["top_bill_count"] = _top(events, bill, users)
    facts["n_travel_bill"] = count(bill & (cat == "travel"))
    facts["n_credit_bill"] = count(bill & (cat == "credit"))
    facts["n_credit_search"] = count((mod == "search") & (cat == "credit"))
    facts["n_wealth"] = count(mod.isin(["mini", "spm", "app"]) & (cat == "wealth"))
    facts["n_food_bill"] = count(bill & (cat == "food_delivery"))
    facts["n_game_apps"] = count((mod == "app") & (cat == "entertainment"))
    facts["n_health"] = count(mod.isin(["search", "mini"]) & (cat == "health"))
    facts["n_app"] = count(mod == "app")
    facts["top_app_category"], _ = _top(events, mod == "app", users)
    facts["n_search"] = count(mod == "search")
    facts["top_search_category"], facts["top_search_count"] = _top(events, mod == "search", users)
    facts["n_transport"] = count(mod.isin(["bill", "mini"]) & (cat == "transport"))
    refills, plans = bill & (cat == "refills"), bill & (cat == "quarterly plans")
    facts["n_refill"] = count(refills)
    facts["refill_days_ago"], facts["refill_gap_days"] = _recency(events, refills, users, as_of)
    facts["n_plan"] = count(plans)
    facts["plan_days_ago"], _ = _recency(events, plans, users, as_of)
    hours = events["event_time"].dt.hour
    period = pd.Series(pd.cut(hours, [p[1] for p in _PERIODS] + [24], right=False,
                              labels=[p[0] for p in _PERIODS]).astype(str), index=events.index)
    by_period = pd.DataFrame({"user_id": events["user_id"], "category": period})
    facts["active_period"], facts["active_period_count"] = _top(by_period, pd.Series(True, index=events.index), users)
    facts["n_events"] = count(pd.Series(True, index=events.index))
    prof = profiles.set_index("user_id")
    facts["age"] = prof["age"].astype(np.int64)
    facts["occupation"] = prof["occupation"].astype(str).str.replace("_", " ")
    facts["city_tier"] = prof["city_tier"].astype(np.int64)
    return facts


def render_answer(topic: Topic, facts: pd.Series) -> str:
    for variant in topic.variants:
        if variant.when(facts):
            return variant.template.format(**facts.to_dict())
    raise ValueError(f"no variant of topic {topic.name!r} applies")


def sample_questions(rng: np.random.Generator, facts: pd.DataFrame, per_user: int, query_time: pd.Timestamp,
                     topics: tuple[Topic, ...] = TOPICS) -> pd.DataFrame:
    """`per_user` distinct topics per user, each with its grounded answer."""
    picks = np.argsort(rng.random((len(facts), len(topics))), axis=1)[:, :per_user]
    rows = []
    for (user_id, f), topic_idx in zip(facts.iterrows(), picks):
        for i in topic_idx:
            topic = topics[i]
            rows.append((user_id, query_time, topic.name, topic.question, render_answer(topic, f)))
    return pd.DataFrame(rows, columns=["user_id", "query_time", "topic", "question", "answer"])


_NUMBER = r"-?\d+(?:\.\d+)?"


def _template_regex(template: str, facts: pd.Series) -> re.Pattern[str]:
    """The template as a parser: numeric facts match numbers, text facts match any text."""
    parts = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field_name:
            numeric = isinstance(facts[field_name], (int, float, np.integer, np.floating))
            parts.append(f"(?P<{field_name}>{_NUMBER if numeric else '.+?'})")
    return re.compile("^" + "".join(parts) + "$")


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str = ""


def check_answer(topic_name: str, answer: str, facts: pd.Series) -> CheckResult:
    """Verify each claim of `answer` against facts re-derived from the user's raw data."""
    topic = TOPIC_BY_NAME.get(topic_name)
    if topic is None:
        return CheckResult(False, f"unknown topic {topic_name!r}")
    for variant in topic.variants:
        match = _template_regex(variant.template, facts).match(answer)
        if match is None:
            continue
        if not variant.when(facts):
            return CheckResult(False, f"answer form {variant.template!r} contradicts the data")
        for key, claimed in match.groupdict().items():
            actual = facts[key]
            if isinstance(actual, (float, np.floating)):
                if abs(float(claimed) - float(actual)) > 0.011:
                    return CheckResult(False, f"{key}: answer says {claimed}, data says {actual:.2f}")
            elif isinstance(actual, (int, np.integer)):
                if float(claimed) != int(actual):
                    return CheckResult(False, f"{key}: answer says {claimed}, data says {actual}")
            elif claimed != str(actual):
                return CheckResult(False, f"{key}: answer says {claimed!r}, data says {actual!r}")
        return CheckResult(True)
    return CheckResult(False, "answer does not follow any form of its topic")


def check_dataset(uqa: pd.DataFrame, facts: pd.DataFrame) -> pd.DataFrame:
    """Rows of `uqa` whose answers fail the check, with the reason."""
    failures = []
    for row in uqa.itertuples(index=False):
        result = check_answer(row.topic, row.answer, facts.loc[row.user_id])
        if not result.ok:
            failures.append((row.user_id, row.topic, row.answer, result.reason))
    return pd.DataFrame(failures, columns=["user_id", "topic", "answer", "reason"])
