"""Daily drift check at 100k and 1M users: time per step and peak memory (CPU).

The populations are built by resampling the imported feature rows of a small generated dataset
(same schema, same per-user distributions, new user ids), one snapshot for the reference and an
independently resampled one for "today"; building them is not timed. Each size runs in its own
process so its peak RSS is its own. Timed steps: reading the reference snapshot, building the
reference (statistics, samples, GE suites), reading today's snapshot, statistics (PSI, KS, JS,
unseen kinds), the GE Checkpoints with Data Docs, the HTML report. Embedding drift embeds a fixed
sample (500 users per scenario by default) whatever the population, so it is not part of this
scaling table (see docs/benchmarks.md for its cost on the demo backbone).

    .venv/bin/python bench/drift_check.py                 # 100k and 1M users
    .venv/bin/python bench/drift_check.py --users 100000  # one size
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _report import emit  # noqa: E402

SEED_USERS = 2_000
PART_ROWS = 100_000
AS_OF = datetime(2026, 10, 1, tzinfo=timezone.utc)


def _seed_features(work: Path) -> Path:
    from feature_repo.ingest import ImportConfig, import_data
    from qanchor.modality_spec import load_spec
    from qanchor.synthetic.generator import GeneratorConfig, generate

    raw, features = work / "seed-raw", work / "seed-features"
    if not (features / "manifest.json").is_file():
        generate(GeneratorConfig(users=SEED_USERS, seed=5, as_of=AS_OF), raw, progress=False)
        import_data(ImportConfig(events=raw / "events", profiles=raw / "profiles", out=features, spec=load_spec(),
                                 as_of=AS_OF, snapshots=1), progress=False)
    return features


def _resample(seed_features: Path, out: Path, users: int, seed: int) -> Path:
    """`users` rows per view drawn with replacement from the seed population's rows, new user ids."""
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(seed)
    for view in sorted(p for p in seed_features.iterdir() if p.is_dir()):
        table = pq.read_table(view)
        (out / view.name).mkdir(parents=True, exist_ok=True)
        for part, first in enumerate(range(0, users, PART_ROWS)):
            n = min(PART_ROWS, users - first)
            sample = table.take(pa.array(rng.integers(0, table.num_rows, n)))
            ids = pa.array([f"b{seed}-{i:09d}" for i in range(first, first + n)], type=pa.string())
            sample = sample.set_column(sample.schema.get_field_index("user_id"), "user_id", ids)
            pq.write_table(sample, out / view.name / f"part-{part:05d}.parquet")
    (out / "manifest.json").write_text((seed_features / "manifest.json").read_text())
    return out


def run_one(users: int, work: Path) -> dict:
    """One size, timed step by step (called in a child process)."""
    import pandas as pd

    from monitoring.drift_check import run_check
    from monitoring.drift_config import DriftThresholds
    from monitoring.drift_report_html import render_report
    from monitoring.drift_suites import build_suites, suite_documents
    from monitoring.reference import build_reference
    from monitoring.snapshot_profile import read_snapshot
    from qanchor.modality_spec import parse_spec

    seed_features = _seed_features(work)
    spec = parse_spec(json.loads((seed_features / "manifest.json").read_text())["spec"], "manifest")
    reference_data = _resample(seed_features, work / f"reference-{users}", users, 1)
    today_data = _resample(seed_features, work / f"today-{users}", users, 2)
    thresholds, snapshot = DriftThresholds(), pd.Timestamp(AS_OF)
    steps: dict[str, float] = {}

    def timed(name, call):
        start = time.perf_counter()
        value = call()
        steps[name] = round(time.perf_counter() - start, 2)
        return value

    profile = timed("read reference snapshot", lambda: read_snapshot(reference_data, spec, snapshot, thresholds.recent_days))
    reference = timed("build reference", partial(build_reference, profile, thresholds, "1", "bench", work))
    timed("save reference", lambda: reference.save(work / f"ref-folder-{users}", suite_documents(build_suites(reference, thresholds))))
    del profile
    today = timed("read today's snapshot", lambda: read_snapshot(today_data, spec, snapshot, thresholds.recent_days))
    with tempfile.TemporaryDirectory() as docs:
        report = timed("statistics + GE checkpoints", lambda: run_check(reference, today, thresholds, "bench",
                                                                          docs_dir=Path(docs) / "data_docs"))
    timed("HTML report", lambda: render_report(report, reference, today))
    return {"users": users, "steps_s": steps, **report.timings_s, "total_s": round(sum(steps.values()), 2),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "success": report.success, "failed": [f.feature for f in report.failures]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, action="append", help="Population size (repeatable); default 100k and 1M.")
    parser.add_argument("--work", type=Path, default=Path("data/bench-drift"), help="Where the populations are written.")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.work)))
        return
    rows = []
    for users in args.users or [100_000, 1_000_000]:
        args.work.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, __file__, "--child", str(users), "--work", str(args.work)],
                              check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        slowest = max(result["steps_s"], key=result["steps_s"].get)
        rows.append({"users": users, **result["steps_s"], "of which GE": result["great_expectations"],
                     "total_s": result["total_s"],
                     "peak_rss_gib": result["peak_rss_gib"], "dominant step": slowest,
                     "false alarm": not result["success"]})
    emit("drift_check", rows, {"seed_users": SEED_USERS, "note": "CPU, one process per size; embedding drift excluded"})


if __name__ == "__main__":
    main()
