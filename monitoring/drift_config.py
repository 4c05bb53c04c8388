"""Drift thresholds: one YAML file, the defaults below where it is silent.

Every threshold is an effect size (how far a distribution moved), so the same file works for a
thousand users and a million. The defaults were set from the null distribution measured over
independent no-drift populations (`tests/test_drift_monitor.py` prints the false-alarm rate) and
catch each drift the generator can inject (`qanchor data generate --drift`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from qanchor.user_files import UserFileError, read_yaml_model


class DriftThresholds(BaseModel):
    """A feature fails when any of its statistics passes its threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Days of events the event-level features and kind shares look at (one of the spec's history windows).
    recent_days: int = Field(30, ge=1)
    #: Probability that sampling noise alone passes a PSI, KS or JS limit: each limit is the larger
    #: of its floor below and the value noise reaches at this probability for today's sample sizes.
    alpha: float = Field(0.001, gt=0, lt=0.5)
    #: Floor of the population stability index over the reference's decile bins.
    psi: float = Field(0.1, gt=0)
    #: Floor of the two-sample Kolmogorov-Smirnov D.
    ks: float = Field(0.05, gt=0, le=1)
    #: Great Expectations' KL divergence (bits) of today's values from the reference histogram.
    kl: float = Field(0.25, gt=0)
    #: Relative change of the mean and of the median / 90th percentile that GE's suite allows.
    mean_change: float = Field(0.2, gt=0)
    quantile_change: float = Field(0.3, gt=0)
    #: Relative change of the standard deviation GE's suite allows (heavy-tailed amounts need room).
    stdev_change: float = Field(0.5, gt=0, lt=1)
    #: Floor of the Jensen-Shannon distance (base 2) between category shares (reference top-k + other).
    js: float = Field(0.05, gt=0, le=1)
    #: Share of recent event weight on kinds the reference never saw.
    unseen_share: float = Field(0.1, gt=0, le=1)
    #: Absolute increase of a profile field's null share.
    null_share_increase: float = Field(0.05, gt=0, le=1)
    #: Categories kept per categorical feature; the rest pool into "<other>".
    top_k: int = Field(50, ge=2)
    #: Fewer values than this on either side: the feature is reported as too small to judge, not failed.
    min_values: int = Field(200, ge=1)
    #: Embedding drift: cross-validated ROC AUC of a classifier telling reference from current vectors,
    #: and 1 - cosine between the two centroids.
    domain_auc: float = Field(0.7, gt=0.5, le=1)
    centroid_shift: float = Field(0.05, gt=0, le=2)
    #: Users embedded per scenario on each side (a seeded sample).
    embedding_users: int = Field(500, ge=20)


def load_thresholds(path: Path | None) -> DriftThresholds:
    """The thresholds in `path` (YAML), or the defaults; a bad file is a UserFileError naming the key."""
    if path is None:
        return DriftThresholds()
    return read_yaml_model(path, "drift thresholds", DriftThresholds, UserFileError)
