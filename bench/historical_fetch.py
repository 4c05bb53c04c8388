"""Point-in-time training reads: rows/s through `UserFeatureStore.features_at`, three readers.

What pretraining, corpus building and evaluation wait on: for every (user, time) entity row,
each of the 11 views' newest snapshot at or before the time, converted into `UserFeatures`
(validation included). One imported dataset serves every reader:

- `direct`: the default for local parquet sources, DuckDB ASOF JOINs straight over the files
  (`feature_repo.point_in_time`), pipelined with the conversion;
- `feast-duckdb`: Feast's `get_historical_features` on its DuckDB offline store;
- `feast-dask`: the same on Feast's dask store, the old default (opt-in: `--dask-max-rows`).

Speed-ups are against Feast-on-DuckDB, the in-run baseline, at every size (and against dask
where it ran). Entity rows are
distinct (user, time) pairs at the two snapshots (dask drops repeated pairs). Best of `--repeats`.

    python bench/historical_fetch.py [--rows 2000,10000,100000] [--dask-max-rows 0] [--repeats 2]
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


def _read(store: UserFeatureStore, users: list[str], times: list[pd.Timestamp], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        features = store.features_at(users, times)
        best = min(best, time.perf_counter() - start)
        assert len(features) == len(users)
        del features
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000,10000,100000", help="Comma-separated entity-row counts.")
    parser.add_argument("--dask-max-rows", type=int, default=0,
                        help="Also time Feast's dask store up to this size (default: skip; over 17 min for "
                             "2,000 rows of this store on 2 cores).")
    parser.add_argument("--repeats", type=int, default=2, help="Timed reads per reader and size; the best counts.")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.rows.split(","))
    users_needed = (max(sizes) + 1) // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        generate(GeneratorConfig(users=users_needed, seed=3), tmp / "raw", progress=False)
        import_data(ImportConfig(events=tmp / "raw" / "events", profiles=tmp / "raw" / "profiles",
                                 out=tmp / "features", spec=load_spec(), as_of=DEFAULT_AS_OF), progress=False)
        print(f"generated and imported {users_needed} users in {time.perf_counter() - start:.0f}s", flush=True)
        readers = {}
        for engine in ("duckdb", "dask"):
            repo = write_repo(tmp / engine, tmp / "features", offline_store=engine)
            UserFeatureStore(repo).apply()
            readers[f"feast-{engine}"] = UserFeatureStore(repo, point_in_time="feast")
        readers["direct"] = UserFeatureStore(tmp / "duckdb")
        snapshots = [pd.Timestamp(DEFAULT_AS_OF), pd.Timestamp(DEFAULT_AS_OF) - pd.Timedelta(days=30)]
        all_users = [f"u{i:09d}" for i in range(users_needed)]
        for n in sizes:
            users = [all_users[i // 2] for i in range(n)]
            times = [snapshots[i % 2] for i in range(n)]
            measured = {}
            for name, store in readers.items():
                if name == "feast-dask" and n > args.dask_max_rows:
                    continue
                measured[name] = _read(store, users, times, 1 if name == "feast-dask" else args.repeats)
                print(f"{name} {n} rows: {measured[name]:.2f}s", flush=True)
            for name, seconds in measured.items():
                rate = n / seconds
                rows.append({"reader": name, "rows": n, "seconds": seconds, "rows_per_s": rate,
                             "vs_feast_dask": measured["feast-dask"] / seconds if "feast-dask" in measured else None,
                             "vs_feast_duckdb": measured["feast-duckdb"] / seconds,
                             "target_5000_rows_per_s": "met" if rate >= TARGET_ROWS_PER_S else "MISSED"})
    emit("historical_fetch", rows, {"users": users_needed, "cpu_count": os.cpu_count(), "repeats": args.repeats,
                                    "note": "features_at: point-in-time join + conversion to UserFeatures"})


if __name__ == "__main__":
    main()
