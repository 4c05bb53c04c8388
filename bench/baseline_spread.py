"""How much of "ahead of LightGBM on task t" is LightGBM's own fit noise? The baseline refitted with several seeds.

Every table of bench/quality.py pairs Q-Anchor with ONE LightGBM fit per task (the bundle's
`gbdt_history`, scored at export). Its row and column subsampling make that fit one draw: on a
task with 40-130 test positives two seeds can differ by more than Q-Anchor and LightGBM do, so
a per-task count such as "ahead on 8 of 10" partly counts the baseline's luck. This refits the
baseline on the same users and features with `--seeds` seeds and reports, per task, the spread
of its test AUC and the AUC of the seeds' averaged predictions (a bagged LightGBM: the stabler
and usually stronger baseline). Given saved variants (`--scores OUT/<variant>`, the folders
bench/quality.py writes), it also places each one against that spread and pairs it with the
bagged baseline on the same test users:

    python bench/baseline_spread.py --bundle DIR [--seeds 5] [--tasks a,b,...] \
        [--scores OUT/full OUT_6/full_prompt_6:qanchor_prompt ...]

(a folder's task-query scores are compared unless `:METHOD` names others, e.g. the prompted
probe of a prompt-sweep point).

LightGBM only (no model, no accelerator): about 13 s a fit on one CPU thread for the q100 bundle's
5,000 users and 1,261 history columns (ten tasks x five seeds: 634 s).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import emit  # noqa: E402
from quality import load_bundle, load_test_scores  # noqa: E402

from training.evaluation.harness import (  # noqa: E402
    MIN_TEST_POSITIVES,
    baseline_tables,
    paired_difference,
    population_parts,
    task_labels,
)
from training.evaluation.metrics import roc_auc  # noqa: E402
from training.evaluation.probe import gbdt_seed_scores  # noqa: E402

#: The bundle's baseline each variant is compared with, and the table it is fitted on.
BASELINES = ("gbdt_history", "gbdt_aggregates")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the bench/quality.py bundle the variants scored")
    parser.add_argument("--seeds", type=int, default=5, help="LightGBM seeds refitted per task (at least 2)")
    parser.add_argument("--baseline", choices=BASELINES, default="gbdt_history")
    parser.add_argument("--scores", nargs="*", default=[], metavar="VARIANT_DIR[:METHOD]",
                        help="folders holding a bench/quality.py test_scores.pkl of this bundle's test users; "
                             "METHOD: the scores compared (default qanchor_query; qanchor_prompt for a sweep point)")
    parser.add_argument("--tasks", help="comma-separated tasks (default: all the bundle's tasks)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--results-name", default="baseline_spread", help="bench/results/<name>.json")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: one seed has no spread")

    bundle, _ = load_bundle(args.bundle)
    population = bundle.population
    parts = population_parts(population)
    names = [t for t in args.tasks.split(",") if t] if args.tasks else population.tasks.names
    unknown = sorted(set(names) - set(population.tasks.names))
    if unknown:
        parser.error(f"--tasks names {unknown}; the bundle has {population.tasks.names}")
    labels = task_labels(population, names)
    test = {t: y[parts.test] for t, y in labels.items()}
    variants: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    for entry in args.scores:  # checked before the long refit
        folder, _, method = entry.partition(":")
        method = method or "qanchor_query"
        saved = load_test_scores(Path(folder))
        if method not in saved.test_scores:
            parser.error(f"{folder} has no {method!r} scores; it has {sorted(saved.test_scores)}")
        if any(t not in saved.test_labels or not np.array_equal(saved.test_labels[t], test[t]) for t in names):
            parser.error(f"{folder} scored other test users or tasks than this bundle: not comparable")
        variants[Path(folder).name] = (method, saved.test_scores[method])

    aggregates, history = baseline_tables(bundle.spec, population)
    table = history if args.baseline == "gbdt_history" else aggregates
    if table is None:
        parser.error("this bundle's spec has no history modalities, so it has no gbdt_history")
    fits = {task: gbdt_seed_scores(table, y, parts, args.seeds) for task, y in tqdm(labels.items(), desc="refit")}
    bagged = {t: np.mean(scores, axis=0) for t, scores in fits.items()}
    bundled = (bundle.baseline_scores or {}).get(args.baseline)

    spread = {t: [roc_auc(test[t], s) for s in fits[t]] for t in names}  # each seed's test AUC
    rows = []
    for task in names:
        seeds = spread[task]
        row = {"task": task, "test_positives": int(test[task].sum()),
               "bundled_fit": None if bundled is None else roc_auc(test[task], bundled[task]),
               "seed_min": min(seeds), "seed_mean": float(np.mean(seeds)), "seed_max": max(seeds),
               "bagged": roc_auc(test[task], bagged[task])}
        for name, (_, scores) in variants.items():
            row[name] = roc_auc(test[task], scores[task])
        rows.append(row)

    reliable = [t for t in names if test[t].sum() >= MIN_TEST_POSITIVES] or names
    summary = []
    for name, (method, scores) in variants.items():
        aucs = {t: roc_auc(test[t], scores[t]) for t in reliable}
        versus_bagged = paired_difference(test, reliable, scores, bagged, args.resamples)
        entry = {"variant": name, "method": method, "tasks": len(reliable),
                 "ahead_of_seed_mean": int(sum(aucs[t] > np.mean(spread[t]) for t in reliable)),
                 "above_every_seed": int(sum(aucs[t] > max(spread[t]) for t in reliable)),
                 "below_every_seed": int(sum(aucs[t] < min(spread[t]) for t in reliable)),
                 "minus_bagged_auc": versus_bagged["auc_diff"],
                 "auc_95": f"[{versus_bagged['auc_diff_low']:.3f}, {versus_bagged['auc_diff_high']:.3f}]",
                 "minus_bagged_ks": versus_bagged["ks_diff"],
                 "ks_95": f"[{versus_bagged['ks_diff_low']:.3f}, {versus_bagged['ks_diff_high']:.3f}]",
                 "ahead_of_bagged": int(versus_bagged["tasks_ahead"])}
        if bundled is not None:
            entry["minus_bundled_auc"] = paired_difference(test, reliable, scores, bundled, args.resamples)["auc_diff"]
        summary.append(entry)
    means = {"task": f"mean ({len(reliable)} tasks)",
             **{k: float(np.mean([r[k] for r in rows if r["task"] in reliable]))
                for k in rows[0] if k not in ("task", "test_positives") and rows[0][k] is not None}}
    emit(args.results_name, [*rows, means], {"bundle": str(args.bundle), "baseline": args.baseline,
                                             "seeds": args.seeds, "summary": summary})
    if summary:
        print()
        emit(f"{args.results_name}_summary", summary, {"bundle": str(args.bundle), "baseline": args.baseline,
                                                       "seeds": args.seeds})


if __name__ == "__main__":
    main()
