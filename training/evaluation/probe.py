"""Supervised read-outs fitted on the probe's train part, chosen on val, scored on test.

Every method (embeddings or handcrafted aggregates) is judged through the same protocol, so a
difference in test AUC is a difference in what the representation carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.evaluation.metrics import roc_auc

#: Inverse regularisation strengths tried for the logistic-regression probe.
C_GRID = (0.003, 0.03, 0.3, 3.0)
#: LightGBM leaves per tree tried for the gradient-boosted baseline.
LEAVES_GRID = (7, 15, 31)


@dataclass(frozen=True)
class Parts:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class ProbeFit:
    test_scores: np.ndarray
    val_auc: float
    chosen: str   # the hyper-parameter val picked, for the report


def logistic_probe(x: np.ndarray, y: np.ndarray, parts: Parts, seed: int = 0) -> ProbeFit:
    """Standardised features -> L2 logistic regression; C by validation AUC."""
    best: tuple[float, float, object] | None = None
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        model.fit(x[parts.train], y[parts.train])
        auc = roc_auc(y[parts.val], model.predict_proba(x[parts.val])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, c, model)
    auc, c, model = best
    return ProbeFit(model.predict_proba(x[parts.test])[:, 1], auc, f"C={c}")


def gbdt_probe(x: pd.DataFrame, y: np.ndarray, parts: Parts, seed: int = 0) -> ProbeFit:
    """LightGBM with early stopping on val; leaves per tree by validation AUC."""
    import lightgbm as lgb

    best: tuple[float, str, object] | None = None
    for leaves in LEAVES_GRID:
        model = lgb.LGBMClassifier(n_estimators=600, learning_rate=0.03, num_leaves=leaves, min_child_samples=10,
                                   subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=seed,
                                   n_jobs=1, verbose=-1)
        model.fit(x.iloc[parts.train], y[parts.train], eval_X=x.iloc[parts.val], eval_y=y[parts.val],
                  eval_metric="auc", callbacks=[lgb.early_stopping(50, verbose=False)])
        auc = roc_auc(y[parts.val], model.predict_proba(x.iloc[parts.val])[:, 1])
        if best is None or auc > best[0]:
            best = (auc, f"leaves={leaves},trees={model.best_iteration_}", model)
    auc, chosen, model = best
    return ProbeFit(model.predict_proba(x.iloc[parts.test])[:, 1], auc, chosen)


def gbdt_seed_scores(x: pd.DataFrame, y: np.ndarray, parts: Parts, seeds: int, seed: int = 0) -> list[np.ndarray]:
    """`gbdt_probe`'s test scores with `seeds` LightGBM seeds (seed, seed + 1, ...).

    Row and column subsampling make one fit a draw: on a task with 40-120 test positives two
    seeds' AUCs differ by up to 0.08 (docs/benchmarks.md, sixteenth run), more than the methods
    compared. Their mean is the bagged baseline (`EvaluationSettings.gbdt_seeds`); their spread
    is what bench/baseline_spread.py reports."""
    return [gbdt_probe(x, y, parts, seed + i).test_scores for i in range(seeds)]
