"""A retailer's own logs, end to end through the CLI, in one process (run by test_own_data.py).

Two modalities the generator does not know (`basket` with a `spend` field, `coupon` with none),
a sparse household profile, events over 150 days before `as_of` and 30 after. Import, corpus,
pretraining, labels by rule and evaluation all run on the embedded stores; at the end the
process must not have imported `qanchor.synthetic`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

AS_OF = pd.Timestamp("2026-06-01", tz="UTC")
SPEC = {
    "version": 1,
    "modalities": [
        {"name": "basket", "kind": "events", "description": "Grocery basket lines.", "text_template": "bought {item}",
         "text_fields": ["item"], "numeric_fields": [{"name": "spend", "min": 0.0, "max": 10000.0}],
         "max_events": 16, "window_days": 60},
        {"name": "coupon", "kind": "events", "description": "Coupons redeemed.", "text_template": "redeemed {coupon}",
         "text_fields": ["coupon"], "max_events": 8, "window_days": 60},
        {"name": "household", "kind": "profile", "fields": [
            {"name": "size", "type": "int", "min": 1, "max": 10, "nullable": True},
            {"name": "region", "type": "category", "values": ["north", "south"]}]},
    ],
}
ITEMS = ["milk", "bread", "apples", "coffee", "rice", "pasta", "cheese", "eggs"]


def write_logs(root: Path, households: int = 450, seed: int = 5) -> tuple[Path, Path, Path]:
    """Baby households buy baby food now and then, before and after as_of: the task's signal."""
    rng = np.random.default_rng(seed)
    ids = [f"h{i:04d}" for i in range(households)]
    baby = rng.random(households) < 0.35
    rows = []
    for hid, has_baby in zip(ids, baby):
        for _ in range(rng.integers(10, 40)):
            day = rng.uniform(-150, 30)
            item = "baby food" if has_baby and rng.random() < 0.2 else ITEMS[rng.integers(len(ITEMS))]
            rows.append((hid, AS_OF + pd.Timedelta(days=day), "basket", f"bought {item}", float(rng.gamma(2, 6))))
        for _ in range(rng.integers(0, 6)):
            rows.append((hid, AS_OF + pd.Timedelta(days=rng.uniform(-150, 30)), "coupon",
                         f"redeemed {'diaper deal' if has_baby and rng.random() < 0.5 else 'weekly saver'}", np.nan))
    export = pd.DataFrame(rows, columns=["user_id", "event_time", "modality", "text", "spend"])
    profiles = pd.DataFrame({"user_id": ids,
                             "size": pd.array([int(s) if rng.random() < 0.4 else None
                                               for s in rng.integers(1, 6, households)], dtype="Int64"),
                             "region": rng.choice(["north", "south"], households)})
    (root / "export").mkdir(parents=True)
    export.to_parquet(root / "export" / "events.parquet", index=False)
    export[export.event_time < AS_OF].to_parquet(root / "events_until_as_of.parquet", index=False)
    profiles.to_parquet(root / "profiles.parquet", index=False)
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return root / "events_until_as_of.parquet", root / "export", root / "profiles.parquet"


def run(root: Path) -> dict:
    from qanchor.cli import cli

    def qanchor(*args: str) -> None:
        try:
            cli.main(list(args), standalone_mode=False)
        except SystemExit as exit_:
            if exit_.code:
                raise
    events, export, profiles = write_logs(root)
    qanchor("data", "import", "--events", str(events), "--profiles", str(profiles), "--spec", str(root / "spec.yaml"),
            "--as-of", "2026-06-01", "--out", str(root / "features"))
    qanchor("features", "apply", "--data", str(root / "features"), "--repo", str(root / "store"))
    qanchor("features", "materialize", "--repo", str(root / "store"))
    qanchor("data", "corpus", "--repo", str(root / "store"), "--out", str(root / "corpus"))
    config = {"data": {"dataset": str(root / "corpus"), "feature_repo": str(root / "store"), "val_examples": 16,
                       "eval_batch_size": 8},
              "optim": {"steps": 4, "batch_size": 8, "warmup_steps": 1},
              "tracking": {"uri": f"sqlite:///{root}/mlruns.db", "register_model": False},
              "output_dir": str(root / "run")}
    (root / "pretrain.yaml").write_text(yaml.safe_dump(config))
    qanchor("pretrain", "--config", str(root / "pretrain.yaml"))
    (root / "baby.yaml").write_text(yaml.safe_dump({"modality": "basket", "text_pattern": "baby food", "window_days": 30}))
    qanchor("data", "labels", "--rule", str(root / "baby.yaml"), "--events", str(export), "--repo", str(root / "store"),
            "--label-time", "2026-06-01", "--out", str(root / "corpus" / "labels" / "baby.parquet"))
    (root / "corpus" / "tasks.yaml").write_text(yaml.safe_dump({
        "generic_query": "What will this household buy next month?",
        "tasks": [{"name": "baby_food_next_month", "group": "Marketing",
                   "query": "will this household buy baby food next month?", "labels": "labels/baby.parquet"}]}))
    qanchor("evaluate", "--backbone", str(root / "run" / "final"), "--repo", str(root / "store"),
            "--dataset", str(root / "corpus"), "--tune-steps", "5", "--resamples", "20", "--no-text-baseline",
            "--no-plots", "--no-mlflow", "--out", str(root / "report"))
    return {"synthetic_imported": sorted(m for m in sys.modules if m.startswith("qanchor.synthetic")),
            "results": json.loads((root / "report" / "results.json").read_text())}


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{sys.argv[1]}/mlruns.db")
    print("RESULT " + json.dumps(run(Path(sys.argv[1]))))
