"""The page a person opens first: one table of every feature, red where it failed, and plots.

Plots (reference vs today) are drawn for every failed feature and the few that moved most
without failing, embedded as PNG so the page is one file that survives being mailed or attached
to a ticket; GE's Data Docs (the expectations one by one) are linked next to it.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from monitoring.drift_check import DriftReport, FeatureDrift
from monitoring.reference import Reference
from monitoring.snapshot_profile import SnapshotProfile

#: Features plotted besides the failed ones: the largest movers by PSI / JS.
EXTRA_PLOTS = 4
FAILED_STYLE = ' style="background:#fdd"'


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _plot(feature: FeatureDrift, reference: Reference, profile: SnapshotProfile) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 2.6))
    if feature.kind == "numeric":
        ref = reference.numeric[feature.feature]
        today = profile.tables[ref.table][ref.column].to_numpy(dtype=np.float64)
        today = today[~np.isnan(today)]
        sample = reference.samples.get(feature.feature, np.array([]))
        pooled = np.concatenate([sample, today])
        if len(pooled):
            lo, hi = np.quantile(pooled, [0.0, 0.99])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            axis.hist(sample, bins=bins, density=True, alpha=0.5, label="reference")
            axis.hist(today, bins=bins, density=True, alpha=0.5, label="today")
    else:
        movers = feature.movers
        labels = [m[0][:40] for m in movers]
        y = np.arange(len(movers))
        axis.barh(y - 0.2, [m[1] for m in movers], height=0.4, label="reference")
        axis.barh(y + 0.2, [m[2] for m in movers], height=0.4, label="today")
        axis.set_yticks(y, labels, fontsize=7)
        axis.invert_yaxis()
    axis.set_title(feature.feature, fontsize=9)
    axis.legend(fontsize=7)
    plt.close(figure)
    return _png(figure)


def _score(feature: FeatureDrift) -> float:
    s = feature.statistics
    return max(s.get("psi", 0.0) / 0.25, s.get("ks", 0.0) / 0.12, s.get("js", 0.0) / 0.15)


def render_report(report: DriftReport, reference: Reference, profile: SnapshotProfile) -> str:
    """The summary page as one HTML string."""
    verdict = "PASSED" if report.success else "FAILED"
    rows = []
    for f in sorted(report.features, key=lambda f: (not f.failed, -_score(f))):
        stats = ", ".join(f"{k}={v:.3g}" for k, v in f.statistics.items() if k not in ("values", "weight"))
        movers = "; ".join(f"{html.escape(c)}: {r:.3f}&rarr;{s:.3f}" for c, r, s in f.movers[:3])
        style = FAILED_STYLE if f.failed else ""
        rows.append(f"<tr{style}><td>{html.escape(f.feature)}</td><td>{html.escape(', '.join(f.failed)) or 'ok'}</td>"
                    f"<td>{html.escape(stats)}</td><td>{movers or html.escape(f.note)}</td></tr>")
    embedding_rows = [
        f"<tr{FAILED_STYLE if e.failed else ''}><td>{html.escape(e.scenario)}</td>"
        f"<td>{html.escape(', '.join(e.failed)) or 'ok'}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v:.3g}' for k, v in e.statistics.items()))}</td></tr>"
        for e in report.embeddings]
    plotted = [f for f in report.features if f.failed]
    plotted += sorted((f for f in report.features if not f.failed and not f.note), key=_score, reverse=True)[:EXTRA_PLOTS]
    images = "".join(f'<img alt="{html.escape(f.feature)}" src="data:image/png;base64,{_plot(f, reference, profile)}">'
                     for f in plotted)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Q-Anchor drift {report.date}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 6px;font-size:13px}}img{{margin:4px}}</style></head><body>
<h1>Drift check {report.date}: {verdict}</h1>
<p>Snapshot {report.snapshot} against the reference of backbone v{report.backbone_version}
(feature version {report.feature_version}, snapshots {', '.join(report.reference_snapshots)}).
{len(report.failures)} of {len(report.features)} features failed; {report.expectations_evaluated} Great Expectations
expectations evaluated (<a href="data_docs/index.html">Data Docs</a>).</p>
<h2>Features</h2><table><tr><th>feature</th><th>failed</th><th>statistics</th><th>largest moves / note</th></tr>
{''.join(rows)}</table>
<h2>Embeddings</h2>{'<table><tr><th>scenario</th><th>failed</th><th>statistics</th></tr>' + ''.join(embedding_rows) + '</table>' if embedding_rows else '<p>No scenario embeddings in this check.</p>'}
<h2>Plots</h2>{images}
</body></html>
"""
