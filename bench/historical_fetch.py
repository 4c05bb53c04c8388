"""Point-in-time training reads: rows/s through `UserFeatureStore.features_at`, three readers.

What pretraining, corpus building and evaluation wait on: for every (user, time) entity row,
each of the 11 views' newest snapshot at or before the time, converted into `UserFeatures`
(validation included). One imported dataset serves every reader:

- `direct`: the default for local parquet sources, DuckDB ASOF JOINs straight over the files
  (`feature_repo.point_in_time`), pipelined with the conversion;
- `feast-duckdb`: Feast's `get_historical_features` on its DuckDB offline store;
- `feast-dask`: the same on Feast's dask store, the old default and the in-run baseline.

Each reader is timed at every size up to its cap (dask is very slow, so it stops early); speed-ups
are against dask at the sizes both ran, and against Feast-on-DuckDB everywhere. Entity rows are
distinct (user, time) pairs at the two snapshots (dask drops repeated pairs). Best of `--repeats`.

    python bench/historical_fetch.py [--rows 2000,10000,100000] [--dask-max-rows 2000] [--dask-limit-s 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import signal
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


class _OverTime(Exception):
    pass


def _read(store: UserFeatureStore, users: list[str], times: list[pd.Timestamp], repeats: int,
          limit_s: int | None = None) -> float | None:
    """Best of `repeats` reads, or None when one ran past `limit_s` (then it is abandoned)."""
    def over(*_: object) -> None:
        raise _OverTime

    best = float("inf")
    previous = signal.signal(signal.SIGALRM, over)
    try:
        for _ in range(repeats):
            signal.alarm(limit_s or 0)
            start = time.perf_counter()
            features = store.features_at(users, times)
            best = min(best, time.perf_counter() - start)
            signal.alarm(0)
            assert len(features) == len(users)
            del features
    except _OverTime:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="2000,10000,100000", help="Comma-separated entity-row counts.")
    parser.add_argument("--dask-max-rows", type=int, default=2_000, help="Skip dask above this size.")
    parser.add_argument("--dask-limit-s", type=int, default=300,
                        help="Abandon a dask read after this long (over 17 min for 2,000 rows here); reported as '>'.")
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
                dask = name == "feast-dask"
                measured[name] = _read(store, users, times, 1 if dask else args.repeats,
                                       args.dask_limit_s if dask else None)
                print(f"{name} {n} rows: {measured[name] or f'> {args.dask_limit_s}'}s", flush=True)
            for name, seconds in measured.items():
                # An abandoned dask read counts at its limit: its speed-ups are then lower bounds.
                dask_s = measured.get("feast-dask", 0) or args.dask_limit_s
                rows.append({"reader": name, "rows": n, "seconds": seconds if seconds else f"> {args.dask_limit_s}",
                             "rows_per_s": n / seconds if seconds else f"< {n / args.dask_limit_s:.1f}",
                             "vs_feast_dask": (f"{'>' if not measured['feast-dask'] else ''}{dask_s / seconds:.0f}x"
                                               if "feast-dask" in measured and seconds else None),
                             "vs_feast_duckdb": measured["feast-duckdb"] / seconds if seconds else None,
                             "target_5000_rows_per_s": "met" if seconds and n / seconds >= TARGET_ROWS_PER_S else "MISSED"})
    emit("historical_fetch", rows, {"users": users_needed, "cpu_count": os.cpu_count(), "repeats": args.repeats,
                                    "note": "features_at: point-in-time join + conversion to UserFeatures"})


if __name__ == "__main__":
    main()
