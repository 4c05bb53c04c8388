"""Does the scenario query pay off when labels are few? Task query, generic query and LightGBM under a label budget.

With the benchmark's 3,750 labelled probe users (2,500 to fit, 1,250 to choose the regularisation)
a logistic probe finds any linear direction, so an embedding that states the user's facts under
the generic query scores as well as one under the task's own query (task - generic within
+-0.006 in every scale run of docs/benchmarks.md). A business unit registering a scenario has
tens to hundreds of labels. There the query can matter by putting the task's facts where a few
labels find them, and a pretrained embedding can matter against LightGBM on window-long history,
which has to learn from the same few labels:

    python bench/label_budget.py --bundle DIR --model OUT/runs/<variant>/final [--budgets 50,100,300,1000] [--draws 5]

A GPU node without LightGBM embeds and stops (`--save-embeddings FILE`: the population under the
generic and every task query, float16); the probes then run where LightGBM is, from the same
bundle (`--embeddings FILE` instead of `--model`), so no weights leave the node.

For each budget N and draw, N labelled users are drawn from the probe's train and val parts,
stratified (at least 4 positives: 3 to fit, 1 to choose the regularisation), and split 3:1 into
fit / validation. The same users fit a logistic probe on the generic-query and on the task-query
embeddings, on the embeddings under ANOTHER task's query (the next task in the list, a different
one with each draw: whether the right query matters, not just any query), and LightGBM on the
window-long history table; all are scored on the whole test part.
Differences are paired on the test users and pooled over tasks and draws (one resample of users
for all of them). Tasks with fewer than `MIN_TEST_POSITIVES` test positives are left out of the
means, as in the main benchmark. The "all" row is the benchmark's own protocol (every probe user,
one draw).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_name, emit  # noqa: E402
from quality import load_bundle, load_trained  # noqa: E402

from training.evaluation.harness import (  # noqa: E402
    MIN_TEST_POSITIVES,
    baseline_tables,
    paired_difference,
    population_parts,
    query_embeddings,
    task_labels,
)
from training.evaluation.metrics import roc_auc  # noqa: E402
from training.evaluation.probe import Parts, gbdt_probe, logistic_probe  # noqa: E402

#: Positives a draw must hold: three to fit the probe, one to choose its regularisation on.
MIN_POSITIVES = 4


def budget_parts(y: np.ndarray, parts: Parts, budget: int, rng: np.random.Generator) -> Parts | None:
    """`budget` labelled users drawn from `parts`' train and val users, stratified, split 3:1 into
    fit / validation (every fourth of each class validates); None if the pool holds too few positives."""
    pool = np.concatenate([parts.train, parts.val])
    positives, negatives = pool[y[pool] == 1], pool[y[pool] == 0]
    n_pos = max(MIN_POSITIVES, round(budget * len(positives) / len(pool)))
    if n_pos > len(positives) or budget - n_pos > len(negatives) or budget - n_pos < MIN_POSITIVES:
        return None
    fit, val = [], []
    for chosen in (rng.choice(positives, n_pos, replace=False), rng.choice(negatives, budget - n_pos, replace=False)):
        fit.append(np.delete(chosen, np.s_[::4]))
        val.append(chosen[::4])
    return Parts(np.sort(np.concatenate(fit)), np.sort(np.concatenate(val)), parts.test)


def saved_embeddings(path: Path, queries: list[str], users: list[str]) -> tuple[np.ndarray, str]:
    """Embeddings `--save-embeddings` wrote and the device that computed them, refused unless they
    are of these users under these queries."""
    with np.load(path, allow_pickle=False) as saved:
        if saved["queries"].tolist() != queries or saved["users"].tolist() != users:
            raise SystemExit(f"{path} holds embeddings of other users or queries than this bundle's population")
        return saved["embeddings"].astype(np.float32), str(saved["device"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the bench/quality.py bundle the model trained on")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a saved variant: OUT/runs/<variant>/final")
    source.add_argument("--embeddings", type=Path, help="a file --save-embeddings wrote for this bundle")
    parser.add_argument("--save-embeddings", type=Path, metavar="FILE",
                        help="write the model's embeddings of the population (.npz) and stop")
    parser.add_argument("--budgets", default="50,100,300,1000", help="labelled users per draw, comma-separated")
    parser.add_argument("--draws", type=int, default=5, help="independent label draws per budget")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-name", default="label_budget", help="bench/results/<name>.json")
    args = parser.parse_args()
    try:
        budgets = [int(b) for b in args.budgets.split(",") if b]
    except ValueError:
        parser.error(f"--budgets takes whole numbers of labelled users, got {args.budgets!r}")
    if not budgets or min(budgets) < 2 * MIN_POSITIVES or args.draws < 1:
        parser.error(f"--budgets needs sizes of at least {2 * MIN_POSITIVES} users and --draws at least 1")

    if args.save_embeddings is not None and args.model is None:
        parser.error("--save-embeddings needs --model")
    bundle, cache = load_bundle(args.bundle)
    population = bundle.population
    parts = population_parts(population)
    tasks = population.tasks
    labels = task_labels(population, tasks.names)
    reliable = [t for t in tasks.names if labels[t][parts.test].sum() >= MIN_TEST_POSITIVES]
    probe_users = len(parts.train) + len(parts.val)
    if max(budgets) >= probe_users:
        parser.error(f"--budgets must stay below the population's {probe_users} labelled probe users "
                     f"(the first row already uses all of them), got {max(budgets)}")

    start = time.perf_counter()
    queries = [tasks.generic_query, *(t.query for t in tasks.tasks)]
    embedded_on = device_name()
    if args.model is not None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_trained(args.model, cache, device)
        emb = query_embeddings(model, population.users, population.reference_times, queries, batch_size=args.batch_size)
        if args.save_embeddings is not None:
            np.savez(args.save_embeddings, embeddings=emb.astype(np.float16), queries=np.array(queries),
                     users=np.array([u.user_id for u in population.users]), device=np.array(embedded_on))
            print(f"wrote {args.save_embeddings} in {time.perf_counter() - start:.0f}s", flush=True)
            return
    else:
        emb, embedded_on = saved_embeddings(args.embeddings, queries, [u.user_id for u in population.users])
    _, history = baseline_tables(bundle.spec, population)
    print(f"embeddings and history table in {time.perf_counter() - start:.0f}s", flush=True)

    n = len(tasks.names)

    def inputs(method: str, i: int, draw: int):
        if method == "other task's query":  # a different task's query with every draw
            return emb[:, 1 + (i + 1 + draw % (n - 1)) % n]
        return {"generic query": emb[:, 0], "task query": emb[:, 1 + i], "gbdt_history": history}[method]

    methods = ("generic query", "task query") + (("other task's query",) if n > 1 else ()) + \
        (("gbdt_history",) if history is not None else ())
    rng = np.random.default_rng(args.seed)
    rows = []
    for budget in [None, *budgets]:
        draws = 1 if budget is None else args.draws
        scores: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
        test_labels: dict[str, np.ndarray] = {}
        skipped = set()
        for i, task in enumerate(tqdm(tasks.names, desc=f"budget {budget or 'all'}")):
            y = labels[task]
            for draw in range(draws):
                chosen = parts if budget is None else budget_parts(y, parts, budget, rng)
                if chosen is None or task not in reliable:
                    skipped.add(task)
                    continue
                key = f"{task}@{draw}"
                test_labels[key] = y[parts.test]
                for method in methods:
                    probe = gbdt_probe if method == "gbdt_history" else logistic_probe
                    scores[method][key] = probe(inputs(method, i, draw), y, chosen, args.seed + draw).test_scores
        keys = list(test_labels)
        row = {"labelled users": budget or probe_users, "draws": draws,
               "tasks": len({k.split("@")[0] for k in keys}), "left out": " ".join(sorted(skipped)) or "-"}
        if not keys:  # too few positives in every task
            rows.append(row)
            continue
        for method in methods:
            row[f"AUC {method}"] = float(np.mean([roc_auc(test_labels[k], scores[method][k]) for k in keys]))
        for ours, theirs in (("task query", "generic query"), ("task query", "other task's query"),
                             ("task query", "gbdt_history")):
            if theirs in scores:
                d = paired_difference(test_labels, keys, scores[ours], scores[theirs], args.resamples, args.seed)
                row[f"{ours} - {theirs}"] = f"{d['auc_diff']:+.3f} [{d['auc_diff_low']:+.3f}, {d['auc_diff_high']:+.3f}]"
        rows.append(row)
    emit(args.results_name, rows, {"bundle": str(args.bundle), "model": str(args.model or args.embeddings),
                                   "device": embedded_on, "test_users": len(parts.test), "seed": args.seed})


if __name__ == "__main__":
    main()
