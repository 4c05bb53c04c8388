"""Write an evaluation as results.json + report.md + PNG plots in one folder.

Plots: test AUC per task and method (bar chart with 95% intervals), and for each tuned task
the test users' embeddings before (task query alone) and after prompt tuning, by PCA and
t-SNE, coloured by label.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from training.evaluation.harness import METHODS, MIN_TEST_POSITIVES, EvaluationResult  # noqa: E402


def _ci(row: dict, key: str) -> str:
    return f"{row[key]:.3f} [{row[key + '_low']:.3f}, {row[key + '_high']:.3f}]"


def markdown(result: EvaluationResult, meta: dict) -> str:
    lines = ["# Q-Anchor evaluation" + (f" ({meta['when']})" if "when" in meta else ""), ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "when"]
    reliable = len(result.test_labels) - len(result.unreliable)
    scope = (f"{reliable} tasks with >= {MIN_TEST_POSITIVES} test positives" if reliable
             else f"all tasks: none has {MIN_TEST_POSITIVES} test positives, so these means are noise-dominated")
    lines += ["", f"## Mean over tasks ({scope}; test users; 95% bootstrap intervals over users)", "",
              "| method | tasks | mean AUC | mean KS |", "|---|---|---|---|"]
    for s in result.summary:
        lines.append(f"| {s['method']} | {s['tasks']} | {_ci(s, 'mean_auc')} | {_ci(s, 'mean_ks')} |")
    if result.comparisons:
        lines += ["", "## Paired differences (same test users, paired bootstrap 95%)", "",
                  "| method | versus | AUC difference | KS difference | tasks ahead (AUC) | share of the gap to the oracle closed |",
                  "|---|---|---|---|---|---|"]
        for c in result.comparisons:
            gap = f"{c['oracle_gap_closed']:+.0%}" if "oracle_gap_closed" in c else ""
            lines.append(f"| {c['method']} | {c['versus']} | {_ci(c, 'auc_diff')} | {_ci(c, 'ks_diff')} | "
                         f"{c['tasks_ahead']}/{c['tasks']} | {gap} |")
    if result.geometry:
        g = result.geometry
        lines += ["", "## Embedding geometry (test users)", "",
                  "| figure | task queries | generic query |", "|---|---|---|",
                  f"| share of squared norm varying across users | {g['user_variance_share']:.3f} | "
                  f"{g['generic_user_variance_share']:.3f} |",
                  f"| mean cosine between two users | {g['mean_user_cosine']:.3f} | {g['generic_mean_user_cosine']:.3f} |",
                  f"| query sensitivity (1 - cos of one user's query-centred vectors, {g['queries']} queries) | "
                  f"{g['query_sensitivity']:.3f} | |"]
    methods = [m for m in METHODS if any(r["method"] == m for r in result.rows)]
    by = {(r["method"], r["task"]): r for r in result.rows}
    for metric in ("auc", "ks"):
        lines += ["", f"## Test {metric.upper()} per task", "", "| task | positives/test | " + " | ".join(methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for task, y in result.test_labels.items():
            cells = [f"{by[(m, task)][metric]:.3f}" if (m, task) in by else "" for m in methods]
            flag = " (unreliable)" if task in result.unreliable else ""
            lines.append(f"| {task}{flag} | {int(y.sum())}/{len(y)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def auc_chart(result: EvaluationResult, path: Path) -> Path:
    methods = [m for m in METHODS if any(r["method"] == m for r in result.rows)]
    tasks = list(result.test_labels)
    by = {(r["method"], r["task"]): r for r in result.rows}
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(tasks)), 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        x = np.arange(len(tasks)) + i * width
        values = np.array([by[(method, t)]["auc"] for t in tasks])
        errors = np.array([[by[(method, t)]["auc"] - by[(method, t)]["auc_low"],
                            by[(method, t)]["auc_high"] - by[(method, t)]["auc"]] for t in tasks]).T
        ax.bar(x, values, width, yerr=errors, label=method, capsize=1.5)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test AUC")
    ax.set_ylim(0.3, 1.12)  # headroom for the legend
    ax.set_yticks(np.arange(0.3, 1.01, 0.1))
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def embedding_plots(result: EvaluationResult, folder: Path, seed: int = 0) -> list[Path]:
    paths = []
    for task, views in result.embeddings.items():
        y = result.test_labels[task]
        for method, project in (("pca", lambda x: PCA(2, random_state=seed).fit_transform(x)),
                                ("tsne", lambda x: TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3),
                                                        random_state=seed, init="pca").fit_transform(x))):
            fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
            for ax, (name, title) in zip(axes, (("query", "query only"), ("prompt", "after prompt tuning"))):
                xy = project(views[name])
                for label, colour in ((0, "tab:blue"), (1, "tab:red")):
                    ax.scatter(*xy[y == label].T, s=8, alpha=0.6, c=colour, label=f"label {label}")
                ax.set_title(f"{task}: {title}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[0].legend(fontsize=7)
            fig.tight_layout()
            path = folder / f"embeddings_{task}_{method}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def write_report(result: EvaluationResult, folder: Path, meta: dict, plots: bool = True) -> list[Path]:
    """results.json, report.md and (optionally) the PNGs under `folder`; returns the files."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**meta, "seconds": result.seconds, "summary": result.summary, "rows": result.rows,
               "comparisons": result.comparisons, "geometry": result.geometry, "unreliable_tasks": result.unreliable,
               "test_positives": {t: int(y.sum()) for t, y in result.test_labels.items()},
               "test_users": len(next(iter(result.test_labels.values())))}
    files = [folder / "results.json", folder / "report.md"]
    files[0].write_text(json.dumps(payload, indent=2))
    files[1].write_text(markdown(result, meta))
    if plots:
        files.append(auc_chart(result, folder / "auc_by_task.png"))
        files += embedding_plots(result, folder)
    return files
