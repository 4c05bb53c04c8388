"""Scenario prompt tuning quality and cost on the downstream tasks (CPU, tiny backbone).

For each task: validation AUC/KS of the query-only scenario (k-means prototypes, no prompt)
and of the tuned one on the same split, plus the time per tuning; then a soft-prompt-token
sweep on one task. The query-only score is the in-run baseline.

    python bench/prompt_tuning.py --model runs/pretrain-tiny/final --dataset data/demo/raw \
        --repo data/demo/feature_store [--tasks all] [--steps 500] [--sweep 1,2,4,6,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

from feature_repo.store import UserFeatureStore  # noqa: E402
from qanchor.model import QAnchor  # noqa: E402
from qanchor.synthetic.tasks import TASKS  # noqa: E402
from training.scenario_labels import validate_labels  # noqa: E402
from training.scenario_tuning import TuningSettings, tune  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Saved Q-Anchor model directory.")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--tasks", default="all", help="Comma-separated task names, or 'all'.")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=6)
    parser.add_argument("--sweep", default="1,2,4,6,8", help="Token counts for the sweep ('' to skip).")
    parser.add_argument("--users", type=int, default=None, help="Use at most this many train-split users.")
    args = parser.parse_args()
    store = UserFeatureStore(args.repo)
    model = QAnchor.from_pretrained(args.model)
    tasks = [t for t in TASKS if args.tasks == "all" or t.name in args.tasks.split(",")]
    train_users = pd.read_parquet(args.dataset / "splits").query("split == 'train'")["user_id"]
    table = pd.read_parquet(args.dataset / "labels")
    table = table[table["user_id"].isin(train_users)].head(args.users)

    # Every task labels the same users at the same time: one point-in-time read serves all runs.
    features = dict(zip(table["user_id"], store.features_at(list(table["user_id"]), list(table["label_time"]))))
    known, window = store.known_users(), store.label_window()

    def run(task, tokens: int) -> dict:
        raw = table[["user_id", "label_time", task.name]].rename(columns={task.name: "label"})
        labels = validate_labels(raw, known, *window)
        users = [features[u] for u in labels.frame["user_id"]]
        times = [int(t.timestamp()) for t in labels.frame["label_time"]]
        start = time.perf_counter()
        result = tune(model, users, times, labels.frame["class_index"].to_numpy(), task.definition,
                      TuningSettings(tokens=tokens, steps=args.steps))
        m = result.metrics
        row = {"task": task.name, "tokens": tokens, "query_only_auc": m["query_only_val_auc"], "tuned_auc": m["val_auc"],
               "query_only_ks": m["query_only_val_ks"], "tuned_ks": m["val_ks"], "steps_run": int(m["steps_run"]),
               "seconds": time.perf_counter() - start}
        print(row, flush=True)  # long runs: each result as it lands, the table at the end
        return row

    rows = [run(task, args.tokens) for task in tasks]
    for tokens in [int(t) for t in args.sweep.split(",") if t]:
        if tokens != args.tokens:
            rows.append(run(tasks[0], tokens))
    emit("prompt_tuning", rows, {"model": str(args.model), "steps": args.steps,
                                 "queries": "each task's written definition is its scenario query"})


if __name__ == "__main__":
    main()
