"""Two-sample drift statistics that Great Expectations does not provide: PSI, KS, Jensen-Shannon.

A feature fails only when its statistic passes both an effect-size floor (how far it moved: with
a million users every p-value is tiny, so significance alone would page someone daily) and the
value sampling noise alone would reach with probability `alpha` at today's sample sizes (with a
few hundred users a real-looking PSI of 0.1 is noise). `*_critical` give the second: the KS
critical value, and the chi-square approximations of PSI (a symmetrised KL, ~ chi2_{B-1} (1/n +
1/m)) and of the Jensen-Shannon divergence (~ chi2_{k-1} (n + m) / (8 n m) nats). Numeric features
are binned once, on the reference's quantiles, and the bins travel with the reference so a check
never re-bins on today's data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats
from scipy.spatial import distance

#: Reference quantile bins per numeric feature (fewer where the feature has fewer distinct values).
PSI_BINS = 10
#: Floor on a bin's share, so an empty bin on one side gives a large but finite PSI.
SHARE_FLOOR = 1e-4
#: The category every value outside a reference's top-k falls into.
OTHER = "<other>"


def quantile_edges(reference: np.ndarray, bins: int = PSI_BINS) -> np.ndarray:
    """Inner bin edges at the reference's quantiles, deduplicated for discrete features."""
    inner = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]) if len(reference) else np.array([])
    return np.unique(inner)


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of `values` per bin; bin i holds edges[i-1] < v <= edges[i] (open outer bins)."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(counts.sum(), 1)


def psi(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    """Population stability index: sum (c - r) ln(c / r) over bins (0.1 "watch", 0.25 "moved" by convention)."""
    r = np.maximum(np.asarray(reference_shares, dtype=float), SHARE_FLOOR)
    c = np.maximum(np.asarray(current_shares, dtype=float), SHARE_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """Largest gap between the two empirical CDFs (two-sample Kolmogorov-Smirnov D)."""
    if len(reference) == 0 or len(current) == 0:
        return 1.0 if len(reference) != len(current) else 0.0
    return float(stats.ks_2samp(reference, current, method="asymp").statistic)


def shares_over(counts: Mapping[str, float], categories: list[str]) -> np.ndarray:
    """Shares of `categories` (the reference's top-k, then OTHER) in a weighted count table."""
    total = float(sum(counts.values()))
    known = np.array([float(counts.get(c, 0.0)) for c in categories if c != OTHER])
    other = total - known.sum()
    shares = np.append(known, other) if OTHER in categories else known
    return shares / total if total > 0 else np.zeros(len(categories))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two share vectors over the same categories."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0 if p.sum() != q.sum() else 0.0
    return float(distance.jensenshannon(p, q, base=2))


def ks_critical(n: int, m: int, alpha: float) -> float:
    """KS D that two samples of one distribution exceed with probability `alpha` (asymptotic)."""
    return float(np.sqrt(-0.5 * np.log(alpha / 2)) * np.sqrt((n + m) / max(n * m, 1)))


def psi_critical(bins: int, n: int, m: int, alpha: float) -> float:
    """PSI that sampling noise alone exceeds with probability `alpha` over `bins` bins."""
    return float(stats.chi2.ppf(1 - alpha, max(bins - 1, 1)) * (1 / max(n, 1) + 1 / max(m, 1)))


def js_critical(categories: int, n: float, m: float, alpha: float) -> float:
    """Jensen-Shannon distance (base 2) that sampling noise alone exceeds with probability `alpha`."""
    nats = stats.chi2.ppf(1 - alpha, max(categories - 1, 1)) * (n + m) / max(8 * n * m, 1)
    return float(np.sqrt(nats / np.log(2)))
