"""A daily drift check: today's snapshot against the serving backbone's reference.

Order matters for "bad input changes nothing": the snapshot is read and compared with the
reference's schema first (an empty day, a changed column type, an all-null column raise
`MonitorInputError` before anything is written); only then do the GE suites, the statistics GE
lacks (PSI, KS, JS, unseen kinds) and the embedding drift run, and the result is written as one
folder (`drift.json`, `report.html`, GE Data Docs) renamed into place.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from monitoring.drift_config import DriftThresholds
from monitoring.drift_suites import build_suites, run_checkpoint
from monitoring.embedding_drift import EmbeddingDrift
from monitoring.gate import DRIFT_FILE
from monitoring.reference import SAMPLE_VALUES, Reference
from monitoring.snapshot_profile import MonitorInputError, SnapshotProfile
from qanchor.staged_folder import staged_folder
from monitoring.statistics import (
    OTHER,
    bin_shares,
    js_critical,
    js_distance,
    ks_critical,
    ks_statistic,
    psi,
    psi_critical,
    shares_over,
)


#: Categories listed per categorical feature as the ones whose share moved most.
TOP_MOVERS = 5


@dataclass
class FeatureDrift:
    """One drift feature: its statistics, which of them failed, and why a person should care."""

    feature: str
    kind: str  # "numeric" | "categorical"
    statistics: dict[str, float]
    failed: list[str] = field(default_factory=list)
    note: str = ""
    #: categorical only: (category, reference share, current share) with the largest moves.
    movers: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.feature.split(".", 1)[0]


@dataclass
class DriftReport:
    """Everything a check found; `drift.json` is this, and `success` gates jobs and rollouts."""

    date: str
    snapshot: str
    backbone_version: str
    feature_version: str
    reference_snapshots: list[str]
    thresholds: dict
    rows: dict[str, int]
    features: list[FeatureDrift]
    embeddings: list[EmbeddingDrift]
    expectations_evaluated: int
    timings_s: dict[str, float]

    @property
    def failures(self) -> list[FeatureDrift]:
        return [f for f in self.features if f.failed]

    @property
    def success(self) -> bool:
        return not self.failures and not any(e.failed for e in self.embeddings)

    def to_dict(self) -> dict:
        return {"success": self.success, **asdict(self),
                "failed_features": [f.feature for f in self.failures],
                "failed_embeddings": [e.scenario for e in self.embeddings if e.failed]}

    def summary(self) -> str:
        head = (f"drift check {self.date} (snapshot {self.snapshot}) vs backbone v{self.backbone_version}'s reference: "
                f"{'PASSED' if self.success else 'FAILED'}; {len(self.features)} features, "
                f"{self.expectations_evaluated} GE expectations, {len(self.embeddings)} scenarios' embeddings")
        lines = [head]
        for f in self.failures:
            stats = ", ".join(f"{k}={f.statistics[k]:.3f}" for k in f.failed if k in f.statistics)
            others = [k for k in f.failed if k not in f.statistics]
            lines.append(f"  FAIL {f.feature}: {stats}{'; GE ' + ', '.join(others) if others else ''}"
                         + (f" ({f.note})" if f.note else ""))
        for e in self.embeddings:
            if e.failed:
                lines.append(f"  FAIL embeddings[{e.scenario}]: " + ", ".join(f"{k}={e.statistics[k]:.3f}" for k in e.failed))
        return "\n".join(lines)


def check_schema(reference: Reference, profile: SnapshotProfile) -> None:
    """Every reference view and column is there with the same type, or a MonitorInputError naming it."""
    for view, columns in reference.schema.items():
        current = profile.schema.get(view)
        if current is None:
            raise MonitorInputError(f"view {view!r} is missing from today's snapshot")
        for column, kind in columns.items():
            if column in current and current[column] != kind:
                raise MonitorInputError(f"view {view!r} column {column!r} changed type: {kind} in the reference, "
                                        f"{current[column]} today")


def _numeric_drift(reference: Reference, profile: SnapshotProfile, thresholds: DriftThresholds,
                   rng: np.random.Generator) -> list[FeatureDrift]:
    out = []
    features = profile.numeric_features()
    for feature, ref in reference.numeric.items():
        table, column = features.get(feature, (ref.table, ref.column))
        values = profile.tables[table][column].to_numpy(dtype=np.float64)
        present = values[~np.isnan(values)]
        null_share = float(1 - len(present) / max(len(values), 1))
        stats = {"null_share": null_share, "mean": float(present.mean()) if len(present) else float("nan"),
                 "reference_mean": ref.mean, "values": float(len(present))}
        drift = FeatureDrift(feature, "numeric", stats)
        if null_share - ref.null_share > thresholds.null_share_increase:
            drift.failed.append("null_share")
        if min(len(present), ref.count) < thresholds.min_values:
            drift.note = f"too few values to judge ({len(present)} today, {ref.count} in the reference)"
            out.append(drift)
            continue
        stats["psi"] = psi(ref.shares, bin_shares(present, np.asarray(ref.edges)))
        stats["psi_limit"] = max(thresholds.psi, psi_critical(len(ref.shares), ref.count, len(present), thresholds.alpha))
        sample = rng.choice(present, SAMPLE_VALUES, replace=False) if len(present) > SAMPLE_VALUES else present
        ref_sample = reference.samples[feature]
        stats["ks"] = ks_statistic(ref_sample, sample)
        stats["ks_limit"] = max(thresholds.ks, ks_critical(len(ref_sample), len(sample), thresholds.alpha))
        drift.failed += [k for k in ("psi", "ks") if stats[k] > stats[f"{k}_limit"]]
        out.append(drift)
    return out


def _categorical_drift(reference: Reference, profile: SnapshotProfile, thresholds: DriftThresholds) -> list[FeatureDrift]:
    out = []
    for feature, ref in reference.categorical.items():
        counts = profile.categorical.get(feature, {})
        total = float(sum(counts.values()))
        current = shares_over(counts, ref.categories)
        stats = {"js": js_distance(np.asarray(ref.shares), current), "weight": total, "distinct": float(len(counts)),
                 "js_limit": max(thresholds.js, js_critical(len(ref.categories), reference.rows[ref.view],
                                                            profile.rows[ref.view], thresholds.alpha))}
        drift = FeatureDrift(feature, "categorical", stats)
        vocabulary = reference.vocabulary.get(feature)
        if vocabulary is not None:
            unseen = sum(v for k, v in counts.items() if k not in vocabulary)
            stats["unseen_share"] = unseen / total if total else 0.0
        if min(total, ref.total) < thresholds.min_values:
            drift.note = f"too few events to judge ({total:.0f} today, {ref.total:.0f} in the reference)"
            out.append(drift)
            continue
        drift.failed += ["js"] if stats["js"] > stats["js_limit"] else []
        drift.failed += ["unseen_share"] if stats.get("unseen_share", 0.0) > thresholds.unseen_share else []
        moves = {c: (r, float(s)) for c, r, s in zip(ref.categories, ref.shares, current)}
        for kind, weight in counts.items():  # categories new since the reference, if large
            if kind not in moves and (vocabulary is None or kind not in vocabulary):
                moves[kind] = (0.0, weight / total)
        moves.pop(OTHER, None)
        drift.movers = sorted(((c, round(r, 4), round(s, 4)) for c, (r, s) in moves.items()),
                              key=lambda m: -abs(m[2] - m[1]))[:TOP_MOVERS]
        out.append(drift)
    return out


def run_check(reference: Reference, profile: SnapshotProfile, thresholds: DriftThresholds, date: str,
              embeddings: list[EmbeddingDrift] | None = None, docs_dir: Path | None = None,
              seed: int = 0) -> DriftReport:
    """Compare `profile` (today) with `reference`; raises MonitorInputError on input it cannot judge."""
    timings = {}
    start = time.perf_counter()
    check_schema(reference, profile)
    features = _numeric_drift(reference, profile, thresholds, np.random.default_rng(seed))
    features += _categorical_drift(reference, profile, thresholds)
    timings["statistics"] = time.perf_counter() - start
    start = time.perf_counter()
    suite_failures, evaluated = run_checkpoint(build_suites(reference, thresholds), profile.tables, docs_dir)
    timings["great_expectations"] = time.perf_counter() - start
    by_name = {f.feature: f for f in features}
    for failure in suite_failures:
        target = by_name.get(failure.feature)
        if target is not None and target.note == "":
            target.failed.append(f"ge:{failure.expectation} (observed {failure.observed})")
    return DriftReport(date=date, snapshot=profile.snapshots[-1], backbone_version=reference.backbone_version,
                       feature_version=reference.feature_version, reference_snapshots=reference.snapshots,
                       thresholds=thresholds.model_dump(), rows=profile.rows, features=features,
                       embeddings=embeddings or [], expectations_evaluated=evaluated,
                       timings_s={k: round(v, 3) for k, v in timings.items()})


def write_check(out: Path, report: DriftReport, render_html, docs_staging: Path | None = None) -> Path:
    """Write `drift.json`, `report.html` (via `render_html(report) -> str`) and the Data Docs as one folder."""
    with staged_folder(out) as staging:
        if docs_staging is not None and docs_staging.is_dir():
            shutil.move(str(docs_staging), staging / "data_docs")
        (staging / DRIFT_FILE).write_text(json.dumps(report.to_dict(), indent=1, default=_json_default) + "\n")
        (staging / "report.html").write_text(render_html(report))
    return Path(out)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")
