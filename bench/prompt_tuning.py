"""Scenario prompt tuning quality and cost on the downstream tasks (CPU, tiny backbone).

For each task: validation AUC/KS of the query-only scenario (k-means prototypes, no prompt)
and of the tuned one on the same split, plus the time per tuning; then a soft-prompt-token
sweep on one task. The query-only score is the in-run baseline.

First, the cost of one tuning step (forward + backward of a batch, same users, same prompt) two
ways in the same run: re-running every user's whole prefix through the decoder (how tuning
worked before the prefix KV engine) and running only the suffix over the cached prefix KV.

    python bench/prompt_tuning.py --model runs/pretrain-tiny/final --dataset data/demo/raw \
        --repo data/demo/feature_store [--tasks all] [--steps 500] [--sweep 1,2,4,6,8]
    python bench/prompt_tuning.py ... --tasks risk_cash_advance --steps 0 --sweep ''   # step timing only
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

from feature_repo.store import UserFeatureStore  # noqa: E402
from qanchor.embedding_engine import EmbeddingEngine  # noqa: E402
from qanchor.suffix_attention import PrefixBatch  # noqa: E402
from qanchor.model import QAnchor  # noqa: E402
from qanchor.synthetic.tasks import TASKS  # noqa: E402
from training.scenario_labels import validate_labels  # noqa: E402
from training.scenario_tuning import TuningSettings, tune  # noqa: E402


def step_timing(model: QAnchor, users: list, times: list[int], query: str, tokens: int, batch_size: int,
                repeats: int) -> dict:
    """Seconds per tuning step, full prefix recompute vs cached prefix KV, and the largest gradient gap."""
    for p in model.network.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    prompt = torch.nn.Parameter(torch.randn(tokens, model.network.backbone.hidden_size, device=model.device) * 0.02)
    target = torch.randn(batch_size, model.settings.embed_dim, device=model.device)
    engine = EmbeddingEngine(model)
    start = time.perf_counter()
    with torch.no_grad():
        prefixes = PrefixBatch.stack(engine.prefixes(users, times))
    encode_seconds = time.perf_counter() - start
    suffix = engine.query_suffix(query, "q", prompt)

    def step(cached: bool, rows: np.ndarray) -> torch.Tensor:
        prompt.grad = None
        if cached:
            vectors = engine.suffix_embeddings(prefixes.select(torch.from_numpy(rows)), [suffix])[:, 0]
        else:
            vectors = model.anchor_embeddings([users[i] for i in rows], [times[i] for i in rows], [query], soft_prompt=prompt)
        ((vectors - target) ** 2).sum().backward()
        return prompt.grad

    seconds = {True: [], False: []}
    gap = 0.0
    for _ in range(repeats):
        rows = rng.choice(len(users), size=batch_size, replace=False)
        grads = {}
        for cached in (False, True):
            begin = time.perf_counter()
            grads[cached] = step(cached, rows).clone()
            seconds[cached].append(time.perf_counter() - begin)
        gap = max(gap, float((grads[True] - grads[False]).abs().max()))
    full, cached = float(np.median(seconds[False])), float(np.median(seconds[True]))
    return {"users": len(users), "batch": batch_size, "tokens": tokens, "full_step_s": full, "cached_step_s": cached,
            "speedup": full / cached, "prefix_encode_once_s": encode_seconds, "max_grad_gap": gap}


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
    parser.add_argument("--timing-steps", type=int, default=10, help="Steps timed each way (0 to skip).")
    args = parser.parse_args()
    store = UserFeatureStore(args.repo)
    model = QAnchor.from_pretrained(args.model)
    tasks = [t for t in TASKS if args.tasks == "all" or t.name in args.tasks.split(",")]
    unknown = sorted(set(args.tasks.split(",")) - {t.name for t in TASKS}) if args.tasks != "all" else []
    if unknown or not tasks:
        parser.error(f"unknown tasks {unknown}; known: {', '.join(t.name for t in TASKS)}")
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
        row = {"task": task.name, "tokens": tokens, "query_only_auc": m["query_only_val_auc"], "tuned_auc": m["tuned_val_auc"],
               "chosen": result.chosen, "query_only_ks": m["query_only_val_ks"], "registered_ks": m["val_ks"], "steps_run": int(m["steps_run"]),
               "seconds": time.perf_counter() - start}
        print(row, flush=True)  # long runs: each result as it lands, the table at the end
        return row

    timing = {}
    if args.timing_steps:
        users = [features[u] for u in table["user_id"]]
        times = [int(t.timestamp()) for t in table["label_time"]]
        timing = step_timing(model, users, times, tasks[0].definition, args.tokens, 64, args.timing_steps)
        emit("prompt_tuning_step", [timing], {"model": str(args.model), "device": str(model.device),
                                               "torch_threads": torch.get_num_threads()})
    rows = [run(task, args.tokens) for task in tasks] if args.steps else []
    for tokens in [int(t) for t in args.sweep.split(",") if t]:
        if tokens != args.tokens:
            rows.append(run(tasks[0], tokens))
    if rows:
        emit("prompt_tuning", rows, {"model": str(args.model), "steps": args.steps, "step_timing": timing,
                                     "queries": "each task's written definition is its scenario query"})


if __name__ == "__main__":
    main()
