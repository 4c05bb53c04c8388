"""Embedding drift per scenario: did the vectors downstream models consume move?

Feature drift says the inputs moved; it does not say whether the model's output moved with
them (a shift the encoder ignores is harmless, a small input shift the model amplifies is not).
Per scenario, a sample of reference users and a sample of today's users are embedded with the
same backbone and scenario versions, and compared by

- `domain_auc`: 5-fold cross-validated ROC AUC of a logistic regression on the coordinates and
  their squares telling the two samples apart (0.5 = indistinguishable; the squares let it see a
  change of spread, which moves no mean),
- `centroid_shift`: 1 - cosine between the two samples' mean vectors, judged only when the two
  means differ by more than sampling noise (`centroid_noise_ratio`: squared distance of the means
  over its expectation under no drift, tr(S_ref)/n + tr(S_cur)/m, against the chi-square bound at
  `alpha`), since the centroid of vectors spread around the origin is itself mostly noise,
- `cosine_ks`: KS D between the two samples' cosines to the reference centroid (how spread moves),
- `unit_norm_violations`: share of today's vectors whose norm is not 1 (the service L2-normalises,
  so anything else is a broken vector, reported as a failure whatever its size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import chi2
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.metrics import roc_auc_score

from monitoring.drift_config import DriftThresholds
from monitoring.statistics import ks_statistic

NORM_TOLERANCE = 1e-3


@dataclass
class EmbeddingDrift:
    scenario: str
    statistics: dict[str, float]
    failed: list[str] = field(default_factory=list)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def domain_auc(reference: np.ndarray, current: np.ndarray, seed: int = 0) -> float:
    """Cross-validated AUC of a classifier separating the two samples (standardised coordinates and squares)."""
    x = np.vstack([reference, current]).astype(np.float64)
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)
    x = np.hstack([x, x**2])
    y = np.r_[np.zeros(len(reference)), np.ones(len(current))]
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), x, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def embedding_drift(scenario: str, reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds,
                    seed: int = 0) -> EmbeddingDrift:
    norms = np.linalg.norm(current, axis=1)
    centroid = _unit(reference.mean(axis=0, keepdims=True))[0]
    today = _unit(current.mean(axis=0, keepdims=True))[0]
    gap = reference.mean(axis=0) - current.mean(axis=0)
    noise = reference.var(axis=0).sum() / len(reference) + current.var(axis=0).sum() / len(current)
    dim = reference.shape[1]
    stats = {
        "domain_auc": domain_auc(reference, current, seed),
        "centroid_shift": float(1 - centroid @ today),
        "centroid_noise_ratio": float(gap @ gap / max(noise, 1e-12)),
        "cosine_ks": ks_statistic(_unit(reference) @ centroid, _unit(current) @ centroid),
        "unit_norm_violations": float(np.mean(np.abs(norms - 1) > NORM_TOLERANCE) if len(norms) else 0.0),
        "users": float(len(current)),
    }
    drift = EmbeddingDrift(scenario, stats)
    drift.failed += ["domain_auc"] if stats["domain_auc"] > thresholds.domain_auc else []
    beyond_noise = stats["centroid_noise_ratio"] > chi2.ppf(1 - thresholds.alpha, dim) / dim
    drift.failed += ["centroid_shift"] if beyond_noise and stats["centroid_shift"] > thresholds.centroid_shift else []
    if stats["unit_norm_violations"] > 0 or not np.isfinite(current).all():
        drift.failed.append("unit_norm_violations")
    return drift


def sample_users(users: np.ndarray, n: int, seed: int) -> list[str]:
    """A seeded sample of `n` distinct users (all of them when there are fewer)."""
    unique = np.unique(users)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(unique, min(n, len(unique)), replace=False).tolist())
