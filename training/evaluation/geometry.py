"""How the embedding uses its space, and how much the query moves it.

A probe can rescale almost any representation, so AUC alone does not say whether the vectors
are usable as served (prototype scoring, cosine look-alikes, vector search). These figures do:

- `user_variance_share`: under one query, the share of the mean squared norm that varies across
  users (1 - |mean vector|^2 for unit vectors). Near 0: every user gets nearly the same vector.
- `mean_user_cosine`: mean cosine between two different users under the same query.
- `query_sensitivity`: for one user, 1 - cosine between its query-centred vectors (each query's
  population mean removed) under two different task queries, averaged over users and query
  pairs. Near 0: the query changes the vector only by a shift common to every user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    user_variance_share: float
    mean_user_cosine: float
    query_sensitivity: float
    queries: int
    users: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def embedding_geometry(vectors: np.ndarray) -> Geometry:
    """`vectors` [n_users, n_queries, D] (L2-normalised): the figures above over those queries
    (query sensitivity is NaN for a single query)."""
    n, q, _ = vectors.shape
    if n < 2:
        raise ValueError(f"need at least 2 users, got {n}")
    vectors = _unit(vectors.astype(np.float64))
    mean = vectors.mean(axis=0)                                  # [q, D]
    squared = (vectors ** 2).sum(-1).mean(0)                     # [q] mean squared norm (1 for unit rows)
    share = float(np.mean(1.0 - (mean ** 2).sum(-1) / squared))
    total = vectors.sum(axis=0)                                  # sum over users, per query
    pair_cosine = ((total ** 2).sum(-1) - (vectors ** 2).sum(-1).sum(0)) / (n * (n - 1))
    sensitivity = float("nan")
    if q >= 2:
        centred = _unit(vectors - mean)                          # [n, q, D]
        gram = np.einsum("nqd,npd->nqp", centred, centred)       # per user, query x query cosines
        sensitivity = float(np.mean(1.0 - gram[:, ~np.eye(q, dtype=bool)]))
    return Geometry(share, float(np.mean(pair_cosine)), sensitivity, q, n)
