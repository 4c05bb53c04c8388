"""The drift reference: what the serving backbone's training data looked like, frozen on disk.

`qanchor monitor build-reference` pools every snapshot of the feature store the backbone was
trained on (its MLflow run names the feature version) and keeps, per drift feature, what a later
check compares against: decile bins and shares (PSI, GE's KL divergence), mean, median and 90th
percentile (GE's bounds), a seeded sample of values (KS), category shares over the top-k plus
"<other>" (JS), the vocabulary of event kinds (unseen share), null shares, the schema of every
view, and a sample of embedding vectors per scenario. The reference is a folder, written
atomically, so a re-import of the feature store cannot change what "normal" means:

    reference.json        metadata, schema and per-feature statistics
    samples.parquet       feature, value: up to SAMPLE_VALUES values per numeric feature
    vocabulary.parquet    feature, kind: every event kind seen
    embeddings.npz        scenario -> (users, dim) vectors, if the backbone has scenarios
    suites/<table>.json   the Great Expectations suites a check runs, for people to read
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.layout import PROFILE_VIEW
from monitoring.drift_config import DriftThresholds
from monitoring.snapshot_profile import SnapshotProfile
from monitoring.statistics import OTHER, bin_shares, quantile_edges
from qanchor.features import history_view_name
from qanchor.staged_folder import staged_folder

REFERENCE_FILE = "reference.json"
#: Values per numeric feature kept for the KS test (a seeded sample; KS D is stable well below this).
SAMPLE_VALUES = 20_000
QUANTILES = (0.5, 0.9)


class DriftReferenceError(ValueError):
    """No usable reference for the asked backbone (never built, or built from another store)."""


@dataclass(frozen=True)
class NumericReference:
    table: str
    column: str
    count: int
    null_share: float
    mean: float
    std: float
    quantiles: dict[str, float]
    edges: list[float]
    shares: list[float]


@dataclass(frozen=True)
class CategoricalReference:
    #: The view whose rows (users) count as the sample size: a user's events share their habits,
    #: so events are not independent draws and would understate the noise.
    view: str
    categories: list[str]
    shares: list[float]
    total: float
    distinct: int


@dataclass
class Reference:
    """A reference profile as stored in its folder (see the module docstring)."""

    backbone_version: str
    feature_version: str
    repo: str
    snapshots: list[str]
    recent_days: int
    created: str
    schema: dict[str, dict[str, str]]
    rows: dict[str, int]
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoricalReference]
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    vocabulary: dict[str, set[str]] = field(default_factory=dict, repr=False)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    #: scenario name -> version the reference vectors came from (a check embeds with the same ones).
    scenarios: dict[str, str] = field(default_factory=dict)

    def save(self, folder: Path, suites: dict[str, dict]) -> Path:
        """Write the folder atomically (staged next to it, then renamed over any older one)."""
        with staged_folder(folder) as staging:
            meta = {k: v for k, v in asdict(self).items() if k not in ("samples", "vocabulary", "embeddings")}
            (staging / REFERENCE_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            pd.DataFrame([(f, float(v)) for f, values in self.samples.items() for v in values],
                         columns=["feature", "value"]).to_parquet(staging / "samples.parquet", index=False)
            pd.DataFrame([(f, k) for f, kinds in self.vocabulary.items() for k in sorted(kinds)],
                         columns=["feature", "kind"]).to_parquet(staging / "vocabulary.parquet", index=False)
            if self.embeddings:
                np.savez_compressed(staging / "embeddings.npz", **self.embeddings)
            (staging / "suites").mkdir()
            for table, suite in suites.items():
                (staging / "suites" / f"{table}.json").write_text(json.dumps(suite, indent=1) + "\n")
        return Path(folder)

    @classmethod
    def load(cls, folder: Path) -> Reference:
        folder = Path(folder)
        path = folder / REFERENCE_FILE
        if not path.is_file():
            raise DriftReferenceError(f"no drift reference in {folder}; build one with `qanchor monitor build-reference`")
        meta = json.loads(path.read_text())
        samples = pd.read_parquet(folder / "samples.parquet")
        vocabulary = pd.read_parquet(folder / "vocabulary.parquet")
        embeddings_path = folder / "embeddings.npz"
        embeddings = dict(np.load(embeddings_path)) if embeddings_path.is_file() else {}
        return cls(**{**meta,
                      "numeric": {k: NumericReference(**v) for k, v in meta["numeric"].items()},
                      "categorical": {k: CategoricalReference(**v) for k, v in meta["categorical"].items()},
                      "samples": {f: g["value"].to_numpy() for f, g in samples.groupby("feature")},
                      "vocabulary": {f: set(g["kind"]) for f, g in vocabulary.groupby("feature")},
                      "embeddings": embeddings})


def reference_folder(repo: Path, backbone_version: str) -> Path:
    """Where a backbone version's reference lives inside the feature repository."""
    return Path(repo) / "monitoring" / "reference" / f"v{backbone_version}"


def _numeric(values: np.ndarray, table: str, column: str) -> NumericReference:
    present = values[~np.isnan(values)]
    edges = quantile_edges(present)
    return NumericReference(
        table=table, column=column, count=int(len(present)),
        null_share=float(1 - len(present) / max(len(values), 1)),
        mean=float(present.mean()) if len(present) else 0.0, std=float(present.std()) if len(present) else 0.0,
        quantiles={str(q): float(np.quantile(present, q)) if len(present) else 0.0 for q in QUANTILES},
        edges=[float(e) for e in edges], shares=[float(s) for s in bin_shares(present, edges)])


def _categorical(feature: str, counts: dict[str, float], top_k: int) -> CategoricalReference:
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    total = float(sum(counts.values()))
    top = ranked[:top_k]
    categories = [k for k, _ in top] + ([OTHER] if len(ranked) > top_k else [])
    shares = [v / total for _, v in top] + ([sum(v for _, v in ranked[top_k:]) / total] if len(ranked) > top_k else [])
    modality = feature.split(".", 1)[0]
    view = PROFILE_VIEW if modality == PROFILE_VIEW else history_view_name(modality)
    return CategoricalReference(view=view, categories=categories, shares=[float(s) for s in shares], total=total,
                                distinct=len(ranked))


def build_reference(profile: SnapshotProfile, thresholds: DriftThresholds, backbone_version: str,
                    feature_version: str, repo: Path, seed: int = 0) -> Reference:
    """Per-feature reference statistics from a (pooled) snapshot profile."""
    rng = np.random.default_rng(seed)
    numeric, samples = {}, {}
    for feature, (table, column) in profile.numeric_features().items():
        values = profile.tables[table][column].to_numpy(dtype=np.float64)
        numeric[feature] = _numeric(values, table, column)
        present = values[~np.isnan(values)]
        samples[feature] = rng.choice(present, SAMPLE_VALUES, replace=False) if len(present) > SAMPLE_VALUES else present
    categorical = {name: _categorical(name, counts, thresholds.top_k) for name, counts in profile.categorical.items()}
    vocabulary = {name: set(counts) for name, counts in profile.categorical.items() if not name.startswith("profile.")}
    return Reference(backbone_version=backbone_version, feature_version=feature_version, repo=str(repo),
                     snapshots=profile.snapshots, recent_days=thresholds.recent_days,
                     created=datetime.now(timezone.utc).isoformat(timespec="seconds"), schema=profile.schema,
                     rows=profile.rows, numeric=numeric, categorical=categorical, samples=samples,
                     vocabulary=vocabulary)
