"""Synthetic UserU generation throughput and memory.

Generates N users (default 100k) in a child process to measure its peak RSS, reports users/s
and events/s, projects the time for 10M users, and compares against the floor of merely
re-writing the same event parquet (measured in the same run) so noisy machines still give a
meaningful ratio.

    python bench/data_gen.py [--users 100000] [--chunk-users 5000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--chunk-users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "qanchor", "data", "generate", "--users", str(args.users),
                        "--seed", str(args.seed), "--chunk-users", str(args.chunk_users), "--out", str(out)],
                       check=True, stderr=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        manifest = json.loads((out / "manifest.json").read_text())
        events = manifest["rows"]["events"]
        disk_mib = sum(p.stat().st_size for p in out.rglob("*.parquet")) / 2**20

        table = ds.dataset(str(out / "events")).to_table()
        start = time.perf_counter()
        pq.write_table(table, Path(tmp) / "rewrite.parquet", compression="zstd")
        write_floor = time.perf_counter() - start

    users_per_s = args.users / elapsed
    rows = [{
        "users": args.users,
        "events": events,
        "seconds": elapsed,
        "users_per_s": users_per_s,
        "events_per_s": events / elapsed,
        "peak_rss_mib": peak_rss_mib,
        "disk_mib": disk_mib,
        "projected_10M_hours": 10_000_000 / users_per_s / 3600,
        "projected_10M_disk_gib": disk_mib * (10_000_000 / args.users) / 1024,
        "events_write_floor_s": write_floor,
        "gen_over_write_floor": elapsed / write_floor,
    }]
    emit("data_gen", rows, {"chunk_users": args.chunk_users, "note": "single process; RSS is bounded by chunk size"})


if __name__ == "__main__":
    main()
