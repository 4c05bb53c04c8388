"""Periodic purchase habits: behaviour whose evidence sits at the OLD end of the window.

The trait-driven tasks (`tasks.py`) can be read from any sample of a user's events, so keeping
only the last `max_events` events loses little. Real payment logs also hold schedules: a pet
owner reorders food every five to eleven weeks, a household pays a property fee every quarter.
Whether the next payment falls in the coming 30 days depends on WHEN the last one happened,
which for a quarterly plan is 60-90 days ago: the oldest events of the window, the first to fall
off a short event sequence, and invisible to any summary of the user's tastes.

The stories, written before any model saw them:

- refills: 35% of users buy one replenishment product (pet food, contact lenses, water filters,
  diapers) from one merchant every P days, P uniform in 35-80, +-4 days of jitter; 15% stop
  in the future window. A further 10% bought one such product once, on a whim, and 4% will.
  Positive: the user buys a refill in the next 30 days. Evidence: time since the last refill
  and the gap between refills (two or three purchases in 90 days).
- quarterly plans: 30% of users pay a quarterly plan (property fee, car service plan, family
  health premium) every 90 +-3 days; 10% cancel. In a 90-day window that is ONE payment, and it
  recurs in the next 30 days exactly when it was made 60-90 days ago. Positive: the user pays
  the plan in the next 30 days. Evidence: the recency of a single old payment.

Both tasks ask about the same users' bill stream but need different facts from it (refill
recency and period vs plan recency), so a query-blind embedding must carry both at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class Habit:
    name: str
    category: str                                # generator `category`; the text's last words
    merchants: tuple[tuple[str, float], ...]     # (merchant, typical amount)
    share: float                                 # users with the habit
    period_days: tuple[float, float]             # uniform range of the period
    jitter_days: float
    keep: float                                  # probability the habit continues into the future
    one_off_observed: float                      # users without the habit who bought once in the window
    one_off_future: float                        # ... and who will buy once in the future window


HABITS: tuple[Habit, ...] = (
    Habit("refills", "refills",
          (("PetPal Supplies", 45.0), ("ClearView Lenses", 60.0), ("AquaPure Filters", 35.0), ("BabyCare Diapers", 80.0)),
          share=0.35, period_days=(35.0, 80.0), jitter_days=4.0, keep=0.85, one_off_observed=0.10, one_off_future=0.04),
    Habit("quarterly_plans", "quarterly plans",
          (("HomeShield Property Fee", 300.0), ("AutoCare Service Plan", 260.0), ("FamilyHealth Premium", 420.0)),
          share=0.30, period_days=(88.0, 92.0), jitter_days=3.0, keep=0.90, one_off_observed=0.0, one_off_future=0.0),
)

#: Generator categories of scheduled payments (D_future names them like task markers).
HABIT_CATEGORIES: tuple[str, ...] = tuple(h.category for h in HABITS)


def habit_text(amount: float, merchant: str, category: str) -> str:
    """Rendered like every other payment (the default spec's bill template)."""
    return f"paid {amount:.2f} at {merchant}, {category}"


def _frame(user_ids: np.ndarray, times: np.ndarray, habit: Habit, merchant: np.ndarray, typical: np.ndarray,
           rng: np.random.Generator) -> pd.DataFrame:
    amount = np.round(typical * np.exp(0.1 * rng.standard_normal(len(times))), 2)
    return pd.DataFrame({
        "user_id": user_ids,
        "event_time": pd.to_datetime(times, unit="s", utc=True),
        "modality": "bill",
        "category": habit.category,
        "amount": amount,
        "duration_s": np.nan,
        "dwell_s": np.nan,
        "text": [habit_text(a, m, habit.category) for a, m in zip(amount, merchant)],
    })


def habit_events(rng: np.random.Generator, user_ids: np.ndarray, window_start: pd.Timestamp, as_of: pd.Timestamp,
                 future_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(observed-window events, future-window events) of every habit for `user_ids`."""
    start, end = window_start.value // 10**9, as_of.value // 10**9
    future_end = end + future_days * SECONDS_PER_DAY
    observed, future = [], []
    n = len(user_ids)
    for habit in HABITS:
        has = rng.random(n) < habit.share
        keeps = rng.random(n) < habit.keep
        pick = rng.integers(0, len(habit.merchants), n)
        names = np.array([m for m, _ in habit.merchants], dtype=object)[pick]
        typical = np.array([a for _, a in habit.merchants])[pick]
        period = rng.uniform(*habit.period_days, n) * SECONDS_PER_DAY
        first = start - rng.uniform(0, 1, n) * period
        cycles = int(np.ceil((future_end - start) / (habit.period_days[0] * SECONDS_PER_DAY))) + 2
        k = np.arange(cycles)
        times = first[:, None] + k[None, :] * period[:, None]
        times = times + rng.normal(0, habit.jitter_days * SECONDS_PER_DAY, times.shape)
        owner = np.broadcast_to(np.arange(n)[:, None], times.shape)
        in_window = has[:, None] & (times >= start) & (times < end)
        in_future = (has & keeps)[:, None] & (times >= end) & (times < future_end)
        # One-off buyers: a single purchase at a uniform time, no schedule.
        once_past = ~has & (rng.random(n) < habit.one_off_observed)
        once_future = ~has & (rng.random(n) < habit.one_off_future)
        for mask, (lo, hi), out in ((in_window, (start, end), observed), (in_future, (end, future_end), future)):
            rows = owner[mask]
            out.append(_frame(user_ids[rows], times[mask].astype(np.int64), habit, names[rows], typical[rows], rng))
            once = once_past if out is observed else once_future
            at = rng.integers(lo, hi, int(once.sum()))
            out.append(_frame(user_ids[once], at, habit, names[once], typical[once], rng))
    return pd.concat(observed, ignore_index=True), pd.concat(future, ignore_index=True)
