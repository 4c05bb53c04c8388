"""Behaviour events for one time window, drawn from latent traits.

Per modality: a Poisson count per user (scaled by activity traits), a category per event from
the user's trait-driven preferences (as visible in that modality), a favourite item within the
category, timestamps shaped by the user's activity trend, and numeric fields. Everything is
vectorised over a chunk of users; texts of fixed items are rendered once and indexed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from qanchor.synthetic.catalog import CATEGORIES, EVENT_RATES, MODALITY_VISIBILITY, T, TRAITS

SECONDS_PER_DAY = 86_400
#: Visibility of a category's trait signal in a modality that does not list it.
WEAK_VISIBILITY = 0.3
#: Idiosyncratic (user x modality x category) preference noise: the same user looks a bit
#: different in every modality.
PREFERENCE_NOISE = 0.7


def display(category: str) -> str:
    return category.replace("_", " ")


@dataclass(frozen=True)
class _ItemTable:
    """Items of one modality, flattened: category of each item and its rendered text parts."""

    offsets: np.ndarray       # first item index per category
    sizes: np.ndarray         # items per category
    texts: np.ndarray         # rendered text per item (object array); bill texts get the amount later
    typical: np.ndarray       # typical amount per item (bill only, else zeros)


def _build_tables() -> dict[str, _ItemTable]:
    builders = {
        "bill": lambda c: [(f"at {m}, {display(c.name)}", amount) for m, amount in c.merchants],
        "mini": lambda c: [(f"opened mini-program {p} ({display(c.name)})", 0.0) for p in c.mini_programs],
        "spm": lambda c: [
            (f"clicked {el} on {page} page (spm a68.b{_page_id(c.name, page):03d}.c{j + 1:02d})", 0.0)
            for page, elements in c.pages
            for j, el in enumerate(elements)
        ],
        "app": lambda c: [(f"installed {a} ({display(c.name)})", 0.0) for a in c.apps],
        "search": lambda c: [(f"searched '{q}'", 0.0) for q in c.queries],
    }
    tables = {}
    for modality, build in builders.items():
        items = [build(c) for c in CATEGORIES]
        sizes = np.array([len(i) for i in items])
        flat = [x for group in items for x in group]
        tables[modality] = _ItemTable(
            offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
            sizes=sizes,
            texts=np.array([t for t, _ in flat], dtype=object),
            typical=np.array([a for _, a in flat], dtype=np.float64),
        )
    return tables


def _page_id(category: str, page: str) -> int:
    pages = [(c.name, p) for c in CATEGORIES for p, _ in c.pages]
    return pages.index((category, page)) + 1


ITEM_TABLES = _build_tables()
_CATEGORY_TRAITS = np.array([[c.traits.get(t, 0.0) for t in TRAITS] for c in CATEGORIES])
_CATEGORY_BASE = np.array([c.base for c in CATEGORIES])
CATEGORY_LABELS = np.array([c.name for c in CATEGORIES], dtype=object)


def category_preferences(rng: np.random.Generator, traits: np.ndarray, modality: str) -> np.ndarray:
    """(n_users, n_categories) probabilities of a user's events in `modality` falling in each category."""
    vis = np.array([MODALITY_VISIBILITY[modality].get(c.name, WEAK_VISIBILITY) for c in CATEGORIES])
    logits = _CATEGORY_BASE + (traits @ _CATEGORY_TRAITS.T) * vis
    logits = logits + PREFERENCE_NOISE * rng.standard_normal(logits.shape)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _event_times(rng: np.random.Generator, trend: np.ndarray, start: pd.Timestamp, days: int,
                 stress: np.ndarray) -> np.ndarray:
    """Epoch seconds; density over the window tilts with the user's trend, late nights with stress."""
    k = 1.6 * trend
    u = rng.random(len(trend))
    safe_k = np.where(np.abs(k) < 1e-6, 1e-6, k)
    tau = np.log1p(u * np.expm1(safe_k)) / safe_k
    day = np.minimum(np.floor(tau * days), days - 1)
    late_night = rng.random(len(trend)) < 0.04 + 0.12 / (1 + np.exp(-1.5 * (stress - 1.0)))
    hour = np.where(late_night, rng.uniform(0, 5, len(trend)), np.clip(rng.normal(14.5, 4.0, len(trend)), 6, 23.99))
    return start.value // 10**9 + (day * SECONDS_PER_DAY + hour * 3600).astype(np.int64)


def generate_window(
    rng: np.random.Generator,
    user_ids: np.ndarray,
    traits: np.ndarray,
    start: pd.Timestamp,
    days: int,
    volume: np.ndarray | None = None,
) -> pd.DataFrame:
    """All modalities' events of `user_ids` in [start, start + days). `volume` scales counts per user."""
    frames = []
    volume = np.ones(len(user_ids)) if volume is None else volume
    for modality, (base_rate, rate_traits) in EVENT_RATES.items():
        table = ITEM_TABLES[modality]
        log_rate = sum(w * traits[:, T[t]] for t, w in rate_traits.items())
        counts = rng.poisson(base_rate * days / 90.0 * np.exp(log_rate) * volume)
        owner = np.repeat(np.arange(len(user_ids)), counts)
        n = len(owner)
        prefs = category_preferences(rng, traits, modality)
        cdf = np.cumsum(prefs, axis=1)
        category = np.minimum((rng.random(n)[:, None] > cdf[owner]).sum(axis=1), len(CATEGORIES) - 1)
        favourite = rng.integers(0, 1_000, size=(len(user_ids), len(CATEGORIES)))
        explore = np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0)
        item = table.offsets[category] + (favourite[owner, category] + explore) % table.sizes[category]
        times = _event_times(rng, traits[owner, T["trend"]], start, days, traits[owner, T["financial_stress"]])
        frame = pd.DataFrame(
            {
                "user_id": user_ids[owner],
                "event_time": pd.to_datetime(times, unit="s", utc=True),
                "modality": modality,
                "category": CATEGORY_LABELS[category],
                "amount": np.nan,
                "duration_s": np.nan,
                "dwell_s": np.nan,
            }
        )
        texts = table.texts[item]
        if modality == "bill":
            amount = np.round(table.typical[item] * np.exp(0.35 * traits[owner, T["affluence"]] + 0.5 * rng.standard_normal(n)), 2)
            amount = np.maximum(amount, 0.5)
            frame["amount"] = amount
            texts = np.array([f"paid {a:.2f} " for a in amount], dtype=object) + texts
        elif modality == "mini":
            frame["duration_s"] = np.round(np.exp(rng.normal(4.3, 0.8, n) + 0.3 * traits[owner, T["mini_affinity"]]), 1)
        elif modality == "spm":
            frame["dwell_s"] = np.round(np.exp(rng.normal(2.4, 1.0, n)), 1)
        frame["text"] = texts
        if modality == "app":
            frame = frame.drop_duplicates(["user_id", "text"])
        frames.append(frame)
    events = pd.concat(frames, ignore_index=True)
    return events.sort_values(["user_id", "event_time"], kind="stable", ignore_index=True)
