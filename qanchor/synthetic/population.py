"""Latent user traits and the profile table they show through.

Traits are correlated standard normals (see `catalog.TRAIT_CORRELATIONS`) nudged by age, so
life stage, income and behaviour hang together the way they do in real payment data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qanchor.synthetic.catalog import OCCUPATIONS, T, TRAIT_CORRELATIONS, TRAITS


def _trait_cholesky() -> np.ndarray:
    corr = np.eye(len(TRAITS))
    for (a, b), rho in TRAIT_CORRELATIONS.items():
        corr[T[a], T[b]] = corr[T[b], T[a]] = rho
    return np.linalg.cholesky(corr)


_CHOL = _trait_cholesky()


def sample_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.clip(np.round(18 + 60 * rng.beta(2.0, 3.5, size=n)), 16, 90).astype(np.int64)


def sample_traits(rng: np.random.Generator, ages: np.ndarray) -> np.ndarray:
    """(n, len(TRAITS)) trait matrix; older users lean to health and investing, younger to games."""
    z = rng.standard_normal((len(ages), len(TRAITS))) @ _CHOL.T
    centred = (ages - 38.0) / 12.0
    z[:, T["health"]] += 0.35 * centred
    z[:, T["investing"]] += 0.25 * centred
    z[:, T["gaming"]] -= 0.45 * centred
    z[:, T["travel"]] -= 0.15 * np.clip(centred, 1.0, None)
    return z


def sample_profiles(rng: np.random.Generator, user_ids: np.ndarray, ages: np.ndarray, traits: np.ndarray) -> pd.DataFrame:
    """The tabular modality: attributes a platform knows from KYC and account history."""
    n = len(user_ids)
    aff, stress, act = traits[:, T["affluence"]], traits[:, T["financial_stress"]], traits[:, T["activity"]]
    gender = rng.choice(np.array(["female", "male", "unknown"]), size=n, p=[0.49, 0.49, 0.02])
    tier_score = -0.8 * aff + rng.standard_normal(n)
    city_tier = 1 + np.digitize(tier_score, [-0.9, 0.2, 1.1])

    occ_idx = {name: i for i, name in enumerate(OCCUPATIONS)}
    logits = np.zeros((n, len(OCCUPATIONS)))
    logits[:, occ_idx["engineer"]] = 0.8 * aff
    logits[:, occ_idx["civil_servant"]] = 0.4 * aff - 0.3
    logits[:, occ_idx["service_worker"]] = -0.8 * aff
    logits[:, occ_idx["self_employed"]] = 0.3 * stress - 0.2
    logits[:, occ_idx["freelancer"]] = -0.5 + 0.2 * stress
    logits[:, occ_idx["student"]] = np.where(ages < 24, 3.0, -6.0)
    logits[:, occ_idx["retired"]] = np.where(ages >= 60, 3.5, -6.0)
    gumbel = -np.log(-np.log(rng.random((n, len(OCCUPATIONS)))))
    occupation = np.asarray(OCCUPATIONS)[np.argmax(logits + gumbel, axis=1)]

    income = np.exp(8.8 + 0.55 * aff - 0.12 * (city_tier - 2) + 0.3 * rng.standard_normal(n))
    income = np.where(occupation == "student", income * 0.15, income)
    income = np.where(occupation == "retired", income * 0.5, income)
    income = np.round(income, -1)
    member_years = np.minimum(ages - 16, rng.poisson(np.exp(1.3 + 0.2 * act))).clip(0, 30)
    credit_limit = np.round(income * np.exp(0.3 * rng.standard_normal(n)) * np.clip(1.6 - 0.4 * stress, 0.2, None), -2)

    return pd.DataFrame(
        {
            "user_id": user_ids,
            "age": ages,
            "gender": gender,
            "city_tier": city_tier.astype(np.int64),
            "occupation": occupation,
            "income_monthly": income.astype(np.float64),
            "member_years": member_years.astype(np.int64),
            "credit_limit": credit_limit.astype(np.float64),
        }
    )
