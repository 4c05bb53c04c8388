"""The 12 binary downstream tasks, labelled from the future window.

Each task is a behaviour that happens (or not) in the 30 days after the observation window.
For the ten trait tasks its probability follows a logistic model of latent traits (some with
interactions) plus idiosyncratic noise, so the observed 90 days are evidence, never an answer
key. A positive user gets the behaviour's marker event in the future window; the label is then
read back from the future events by the task's rule (`label_from_future`), exactly as a platform
would label from logs. Intercepts are calibrated so the population positive rate matches
`target_rate`. The two habit tasks (`habits.py`) follow purchase schedules instead: their
evidence is WHEN the last scheduled payment happened, often at the old end of the window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd

from qanchor.synthetic.catalog import T

#: Calibration draws traits from this many users with this seed, independent of any dataset seed.
_CALIBRATION_USERS = 200_000
_CALIBRATION_SEED = 20260101


@dataclass(frozen=True)
class TaskSpec:
    name: str
    group: str                  # Engagement | Risk | Marketing
    definition: str             # what the label means, as documented in docs/data.md
    target_rate: float
    weights: dict[str, float]
    marker_modality: str
    marker_text: str            # the future event that defines a positive (prefix match)
    evidence: str               # where the observed window carries signal
    interactions: dict[tuple[str, str], float] = field(default_factory=dict)
    noise: float = 1.0          # std of the idiosyncratic logit noise: irreducible error
    #: "prefix": the marker event's text starts with `marker_text`; "suffix": ends with it.
    marker_match: str = "prefix"

    @property
    def from_traits(self) -> bool:
        """Drawn from latent traits (with a marker event), not from a purchase schedule."""
        return bool(self.weights)


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "eng_checkin_streak", "Engagement",
        "Completes a 7-day check-in streak in any mini-program during the next 30 days.",
        0.20, {"mini_affinity": 1.3, "activity": 0.5, "trend": 0.7},
        "mini", "completed 7-day check-in streak in mini-program",
        "mini-program visit volume and recency, page clicks",
    ),
    TaskSpec(
        "eng_membership_cancel", "Engagement",
        "Cancels a paid membership inside a mini-program during the next 30 days (churn signal).",
        0.12, {"trend": -1.2, "activity": -0.6, "mini_affinity": -0.5},
        "mini", "cancelled membership in mini-program",
        "activity fading across the 90 days (timestamps), few mini-program visits",
        interactions={("trend", "mini_affinity"): 0.4},
    ),
    TaskSpec(
        "eng_service_activation", "Engagement",
        "Activates a new in-app service from its onboarding page during the next 30 days.",
        0.15, {"mini_affinity": 0.9, "activity": 0.4, "health": 0.4, "investing": 0.3},
        "spm", "clicked activate on service onboarding page",
        "mini-program and page-click breadth, health and wealth pages",
    ),
    TaskSpec(
        "risk_overdue", "Risk",
        "Pays a late fee on an overdue loan or card repayment during the next 30 days.",
        0.08, {"financial_stress": 1.6, "affluence": -0.6},
        "bill", "paid late fee for overdue repayment",
        "loan/credit payments and searches, income and credit limit in the profile",
        interactions={("financial_stress", "trend"): -0.5},
    ),
    TaskSpec(
        "risk_cash_advance", "Risk",
        "Takes a cash advance on a credit line during the next 30 days.",
        0.10, {"financial_stress": 1.1, "gaming": 0.6, "deal_seeking": 0.3},
        "bill", "took cash advance from credit line",
        "credit payments, game spending, late-night activity, borrowing searches",
    ),
    TaskSpec(
        "risk_fraud_report", "Risk",
        "Reports a suspicious transaction from the security page during the next 30 days.",
        0.04, {"gaming": 0.6, "activity": 0.4, "health": 0.3, "financial_stress": 0.3},
        "spm", "clicked report fraud on security page",
        "game top-ups, transaction volume, age (older users are targeted more)",
    ),
    TaskSpec(
        "mkt_coupon_redeem", "Marketing",
        "Redeems a merchant coupon on a payment during the next 30 days.",
        0.30, {"deal_seeking": 1.4, "activity": 0.5},
        "bill", "redeemed coupon on payment",
        "coupon and cashback apps, discount merchants, coupon searches",
    ),
    TaskSpec(
        "mkt_travel_booking", "Marketing",
        "Books a flight or hotel package during the next 30 days.",
        0.12, {"travel": 1.5, "affluence": 0.5},
        "bill", "booked travel package",
        "travel apps and payments, travel searches, affluence",
    ),
    TaskSpec(
        "mkt_fund_purchase", "Marketing",
        "Buys a mutual-fund product for the first time in the window during the next 30 days.",
        0.10, {"investing": 1.4, "affluence": 0.7},
        "bill", "bought mutual fund product",
        "wealth apps, fund pages and mini-programs, income in the profile",
        interactions={("investing", "trend"): 0.4},
    ),
    TaskSpec(
        "mkt_insurance_purchase", "Marketing",
        "Buys a health-insurance policy during the next 30 days.",
        0.06, {"health": 1.3, "investing": 0.3, "affluence": 0.3},
        "bill", "bought health insurance policy",
        "health searches and mini-programs, insurance pages, age",
    ),
)
TASKS = TASKS + (
    TaskSpec(
        "mkt_refill_repeat", "Marketing",
        "Buys a refill of a product they reorder regularly (pet food, contact lenses, water filters, diapers) "
        "during the next 30 days.",
        0.19, {}, "bill", ", refills",
        "time since the last refill purchase and the gap between refills, anywhere in the 90 days",
        marker_match="suffix",
    ),
    TaskSpec(
        "mkt_plan_renewal", "Marketing",
        "Pays the next instalment of a quarterly plan (property fee, car service plan, family health premium) "
        "during the next 30 days.",
        0.09, {}, "bill", ", quarterly plans",
        "a single quarterly-plan payment 60-90 days ago: the oldest end of the window",
        marker_match="suffix",
    ),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)

#: Each task said again in other words: never used in pretraining or tuning, so evaluation can
#: check that the embedding follows the meaning of a query, not its wording (the paper's claim).
PARAPHRASES: dict[str, str] = {
    "eng_checkin_streak": "Is this person likely to check in seven days in a row on some mini app over the coming month?",
    "eng_membership_cancel": "Will this customer drop a paid mini-program subscription soon, within about a month?",
    "eng_service_activation": "Could this user switch on a service they have not used before, via its onboarding screen, in the next month?",
    "risk_overdue": "How likely is this user to be charged a penalty for paying a loan or credit card bill late this month?",
    "risk_cash_advance": "Is this user going to withdraw cash against their credit limit in the coming weeks?",
    "risk_fraud_report": "Will this person flag a payment as possibly fraudulent on the security screen within a month?",
    "mkt_coupon_redeem": "Is this shopper likely to use a store discount voucher when paying in the next four weeks?",
    "mkt_travel_booking": "Will this customer reserve a plane ticket or a hotel deal in the upcoming month?",
    "mkt_fund_purchase": "Could this user make a first purchase of an investment fund over the next month?",
    "mkt_insurance_purchase": "Is this person about to take out medical insurance within the next 30 days?",
    "mkt_refill_repeat": "Is this customer due to restock something they buy on a regular cycle, like pet food or lenses, within a month?",
    "mkt_plan_renewal": "Will this user's next quarterly service or premium payment come up in the coming 30 days?",
}
TRAIT_TASKS: tuple[TaskSpec, ...] = tuple(t for t in TASKS if t.from_traits)


def _logit(task: TaskSpec, traits: np.ndarray, noise: np.ndarray) -> np.ndarray:
    z = sum(w * traits[:, T[t]] for t, w in task.weights.items())
    z = z + sum(w * traits[:, T[a]] * traits[:, T[b]] for (a, b), w in task.interactions.items())
    return z + task.noise * noise


@cache
def intercepts() -> dict[str, float]:
    """Intercept per task so that the mean probability over the population equals its target rate."""
    from qanchor.synthetic.population import sample_ages, sample_traits

    rng = np.random.default_rng(_CALIBRATION_SEED)
    traits = sample_traits(rng, sample_ages(rng, _CALIBRATION_USERS))
    result = {}
    for task in TRAIT_TASKS:
        base = _logit(task, traits, rng.standard_normal(_CALIBRATION_USERS))
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            rate = np.mean(1 / (1 + np.exp(-(base + mid))))
            lo, hi = (mid, hi) if rate < task.target_rate else (lo, mid)
        result[task.name] = (lo + hi) / 2
    return result


def draw_positives(rng: np.random.Generator, traits: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean outcome per task and user: who will show the task's behaviour in the future window."""
    b = intercepts()
    out = {}
    for task in TRAIT_TASKS:
        p = 1 / (1 + np.exp(-(_logit(task, traits, rng.standard_normal(len(traits))) + b[task.name])))
        out[task.name] = rng.random(len(traits)) < p
    return out


def marker_events(rng: np.random.Generator, user_ids: np.ndarray, positives: dict[str, np.ndarray],
                  start: pd.Timestamp, days: int) -> pd.DataFrame:
    """One marker event per (positive user, task), at a uniform time inside the future window."""
    frames = []
    for task in TRAIT_TASKS:
        who = user_ids[positives[task.name]]
        seconds = rng.integers(0, days * 86_400, len(who))
        amount = np.round(np.exp(rng.normal(5.0, 0.8, len(who))), 2) if task.marker_modality == "bill" else np.nan
        frames.append(
            pd.DataFrame(
                {
                    "user_id": who,
                    "event_time": start + pd.to_timedelta(seconds, unit="s"),
                    "modality": task.marker_modality,
                    "category": "task:" + task.name,
                    "amount": amount,
                    "duration_s": np.nan,
                    "dwell_s": np.nan,
                    "text": task.marker_text,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def label_from_future(user_ids: np.ndarray, future_events: pd.DataFrame) -> pd.DataFrame:
    """The label table: a task is positive iff the user's future window holds its marker event."""
    labels = pd.DataFrame({"user_id": user_ids})
    for task in TASKS:
        texts = future_events["text"].str
        matches = texts.startswith(task.marker_text) if task.marker_match == "prefix" else texts.endswith(task.marker_text)
        hit = future_events.loc[(future_events["modality"] == task.marker_modality) & matches, "user_id"].unique()
        labels[task.name] = labels["user_id"].isin(hit).astype(np.int8)
    return labels
