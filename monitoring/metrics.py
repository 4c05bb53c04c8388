"""Drift values as Prometheus gauges: on the service's `/metrics` and as a node-exporter textfile.

One gauge family per statistic, labelled by feature (or scenario), plus the verdict and the
check's date, so an alert can fire on `qanchor_drift_check_success == 0` and a dashboard can plot
`qanchor_drift_psi{feature="bill.amount"}` day by day.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from monitoring.gate import newest_report

_FEATURE_STATS = ("psi", "ks", "js", "unseen_share", "null_share")
_EMBEDDING_STATS = ("domain_auc", "centroid_shift", "cosine_ks")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, help_text: str, label: str, rows: list[tuple[str, float]]) -> list[str]:
    """One gauge family in text exposition format (nothing when it has no samples)."""
    if not rows:
        return []
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge",
            *(f'{name}{{{label}="{_escape(key)}"}} {value:.6g}' for key, value in rows)]


def drift_metrics(report: dict) -> str:
    """Prometheus text exposition of one `drift.json`."""
    lines = ["# HELP qanchor_drift_check_success 1 if the newest drift check passed, else 0.",
             "# TYPE qanchor_drift_check_success gauge",
             f"qanchor_drift_check_success {int(bool(report['success']))}",
             "# HELP qanchor_drift_check_timestamp_seconds Snapshot time the newest drift check judged.",
             "# TYPE qanchor_drift_check_timestamp_seconds gauge",
             f"qanchor_drift_check_timestamp_seconds {datetime.fromisoformat(report['snapshot']).timestamp():.0f}",
             "# HELP qanchor_drift_feature_failed 1 where a feature failed the newest drift check.",
             "# TYPE qanchor_drift_feature_failed gauge"]
    lines += [f'qanchor_drift_feature_failed{{feature="{_escape(f["feature"])}"}} {int(bool(f["failed"]))}'
              for f in report["features"]]
    for stat in _FEATURE_STATS:
        lines += _family(f"qanchor_drift_{stat}", f"Drift statistic {stat} of each feature, newest check.", "feature",
                         [(f["feature"], f["statistics"][stat]) for f in report["features"] if stat in f["statistics"]])
    for stat in _EMBEDDING_STATS:
        lines += _family(f"qanchor_embedding_drift_{stat}", f"Embedding drift {stat} per scenario, newest check.",
                         "scenario", [(e["scenario"], e["statistics"][stat]) for e in report["embeddings"]
                                      if stat in e["statistics"]])
    return "\n".join(lines) + "\n"


def write_textfile(report: dict, path: Path) -> None:
    """Write the gauges for node-exporter's textfile collector, atomically (it reads `*.prom` files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(drift_metrics(report))
    tmp.replace(path)


class LatestDriftMetrics:
    """The newest check's gauges for a long-running service, re-read only when a newer check lands."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self._seen: tuple[Path, float] | None = None
        self._text = ""

    def text(self) -> str:
        newest = newest_report(self.repo)
        if newest is None:
            return ""
        try:
            key = (newest, newest.stat().st_mtime)
            if key != self._seen:
                self._text, self._seen = drift_metrics(json.loads(newest.read_text())), key
        except (OSError, ValueError, KeyError):  # a check being replaced right now: keep the last good one
            pass
        return self._text
