"""Point-in-time training reads: rows/s through `UserFeatureStore.features_at`, DuckDB vs dask.

What pretraining, corpus building and evaluation wait on: a Feast point-in-time join over the
imported parquet sources, including conversion of every row into `UserFeatures`. One imported
dataset serves both engines (two Feast repositories over the same files); dask, the old default,
is the in-run baseline, and the table reports DuckDB's speed-up over it at each size. Entity
rows are distinct (user, time) pairs at the two snapshots (dask drops repeated pairs).

    python bench/historical_fetch.py [--rows 10000,100000] [--dask-max-rows 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from feature_repo.ingest import ImportConfig, import_data  # noqa: E402
from feature_repo.store import UserFeatureStore, write_repo  # noqa: E402
from qanchor.modality_spec import load_spec  # noqa: E402
from qanchor.synthetic.generator import DEFAULT_AS_OF, GeneratorConfig, generate  # noqa: E402

TARGET_ROWS_PER_S = 5_000


def _read(store: UserFeatureStore, users: list[str], times: list[pd.Timestamp]) -> float:
    start = time.perf_counter()
    features = store.features_at(users, times)
    seconds = time.perf_counter() - start
    assert len(features) == len(users)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="Comma-separated entity-row counts.")
    parser.add_argument("--dask-max-rows", type=int, default=10_000, help="Skip dask above this (it is slow).")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    users_needed = (max(sizes) + 1) // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        generate(GeneratorConfig(users=users_needed, seed=3), tmp / "raw", progress=False)
        import_data(ImportConfig(events=tmp / "raw" / "events", profiles=tmp / "raw" / "profiles",
                                 out=tmp / "features", spec=load_spec(), as_of=DEFAULT_AS_OF), progress=False)
        print(f"generated and imported {users_needed} users in {time.perf_counter() - start:.0f}s", flush=True)
        stores = {}
        for engine in ("duckdb", "dask"):
            stores[engine] = UserFeatureStore(write_repo(tmp / engine, tmp / "features", offline_store=engine))
            stores[engine].apply()
        snapshots = [pd.Timestamp(DEFAULT_AS_OF), pd.Timestamp(DEFAULT_AS_OF) - pd.Timedelta(days=30)]
        all_users = [f"u{i:09d}" for i in range(users_needed)]
        for n in sizes:
            users = [all_users[i // 2] for i in range(n)]
            times = [snapshots[i % 2] for i in range(n)]
            measured = {}
            for engine, store in stores.items():
                if engine == "dask" and n > args.dask_max_rows:
                    continue
                measured[engine] = _read(store, users, times)
                print(f"{engine} {n} rows: {measured[engine]:.1f}s", flush=True)
            for engine, seconds in measured.items():
                rate = n / seconds
                rows.append({"engine": engine, "rows": n, "seconds": seconds, "rows_per_s": rate,
                             "vs_dask": (measured["dask"] / seconds) if "dask" in measured else None,
                             "target_5000_rows_per_s": "met" if rate >= TARGET_ROWS_PER_S else "MISSED"})
    emit("historical_fetch", rows, {"users": users_needed, "cpu_count": os.cpu_count(),
                                    "note": "features_at: Feast point-in-time join + conversion to UserFeatures"})


if __name__ == "__main__":
    main()
