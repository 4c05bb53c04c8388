"""AUC, KS and bootstrap intervals for binary scores.

Implemented here rather than borrowed so the harness controls ties and degenerate resamples;
tests check both against scikit-learn and scipy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

from qanchor.scenario import ks_statistic

Metric = Callable[[np.ndarray, np.ndarray], float]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half)."""
    y = np.asarray(labels).astype(bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError("AUC needs both classes among the labels")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


METRICS: dict[str, Metric] = {"auc": roc_auc, "ks": ks_statistic}


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap 95% interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap_mean(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], metric: Metric,
                   resamples: int = 1000, seed: int = 0) -> Estimate:
    """The metric averaged over tasks, with a bias-corrected 95% interval from resampling *users*.

    Every task is scored on the same test users, so one resample of user indices serves all
    tasks at once: the interval of the mean then reflects that the tasks share their users.
    One task is the special case of a one-element list. Resamples where a task's labels hold
    a single class are redrawn.
    """
    n = len(labels[0])
    if any(len(y) != n for y in labels) or any(len(s) != n for s in scores):
        raise ValueError("every task must be scored on the same users")
    point = float(np.mean([metric(y, s) for y, s in zip(labels, scores)]))
    rng = np.random.default_rng(seed)
    values: list[float] = []
    attempts = 0
    while len(values) < resamples:
        attempts += 1
        if attempts > resamples * 20:
            raise ValueError("too few positives or negatives to bootstrap; evaluate on more users")
        index = rng.integers(0, n, n)
        picked = [np.asarray(y)[index] for y in labels]
        if any(y.min() == y.max() for y in picked):
            continue
        values.append(float(np.mean([metric(y, np.asarray(s)[index]) for y, s in zip(picked, scores)])))
    # KS is a maximum over thresholds, so a resample (with repeated users) scores above the
    # sample it came from; on ~150 test users the whole percentile interval can sit above the
    # estimate. Shifting it by the bootstrap's own bias estimate (mean resample - estimate)
    # centres it on the estimate; for AUC the shift is ~0.
    bias = float(np.mean(values)) - point
    low, high = np.percentile(values, [2.5, 97.5]) - bias
    return Estimate(point, float(low), float(high))
