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


def _resampled(labels: Sequence[np.ndarray], statistic: Callable[[np.ndarray], float], resamples: int,
               seed: int) -> list[float]:
    """`statistic(index)` over `resamples` draws of user indices with replacement; draws where a
    task's labels hold a single class are redrawn."""
    n = len(labels[0])
    rng = np.random.default_rng(seed)
    values: list[float] = []
    attempts = 0
    while len(values) < resamples:
        attempts += 1
        if attempts > resamples * 20:
            raise ValueError("too few positives or negatives to bootstrap; evaluate on more users")
        index = rng.integers(0, n, n)
        if any(np.asarray(y)[index].min() == np.asarray(y)[index].max() for y in labels):
            continue
        values.append(statistic(index))
    return values


def bootstrap_mean(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], metric: Metric,
                   resamples: int = 1000, seed: int = 0) -> Estimate:
    """The metric averaged over tasks, with a bias-corrected 95% interval from resampling *users*.

    Every task is scored on the same test users, so one resample of user indices serves all
    tasks at once: the interval of the mean then reflects that the tasks share their users.
    One task is the special case of a one-element list.
    """
    n = len(labels[0])
    if any(len(y) != n for y in labels) or any(len(s) != n for s in scores):
        raise ValueError("every task must be scored on the same users")
    point = float(np.mean([metric(y, s) for y, s in zip(labels, scores)]))
    values = _resampled(labels, lambda index: float(np.mean(
        [metric(np.asarray(y)[index], np.asarray(s)[index]) for y, s in zip(labels, scores)])), resamples, seed)
    # KS is a maximum over thresholds, so a resample (with repeated users) scores above the
    # sample it came from; on ~150 test users the whole percentile interval can sit above the
    # estimate. Shifting it by the bootstrap's own bias estimate (mean resample - estimate)
    # centres it on the estimate; for AUC the shift is ~0.
    bias = float(np.mean(values)) - point
    low, high = np.percentile(values, [2.5, 97.5]) - bias
    return Estimate(point, float(low), float(high))


def bootstrap_difference(labels: Sequence[np.ndarray], scores_a: Sequence[np.ndarray],
                         scores_b: Sequence[np.ndarray], metric: Metric, resamples: int = 1000,
                         seed: int = 0) -> Estimate:
    """Paired bootstrap of mean-over-tasks metric(a) - metric(b) on the same test users.

    Both methods are rescored on the SAME resample of users, so the interval reflects only how
    their difference varies, not each method's own spread: two methods whose separate intervals
    overlap can still differ clearly.
    """
    n = len(labels[0])
    if any(len(y) != n for y in labels) or any(len(s) != n for s in (*scores_a, *scores_b)):
        raise ValueError("every task must be scored on the same users by both methods")

    def mean_difference(index: np.ndarray | None) -> float:
        pick = (lambda x: np.asarray(x)) if index is None else (lambda x: np.asarray(x)[index])
        return float(np.mean([metric(pick(y), pick(a)) - metric(pick(y), pick(b))
                              for y, a, b in zip(labels, scores_a, scores_b)]))

    point = mean_difference(None)
    low, high = np.percentile(_resampled(labels, mean_difference, resamples, seed), [2.5, 97.5])
    return Estimate(point, float(low), float(high))
