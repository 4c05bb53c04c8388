"""Online feature fetch latency through Q-Anchor's Feast adapter, SQLite vs Redis.

Builds one store per backend over the same imported data (default 3,000 users), then times
`UserFeatureStore.online_rows` for batches of 1, 32 and 1000 users. SQLite is the in-run
baseline: the table reports each backend's p50/p99 and Redis/SQLite ratios.

    python bench/feature_fetch.py [--users 3000] [--repeats 40]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("FEAST_USAGE", "False")

from feature_repo.ingest import ImportConfig, import_data  # noqa: E402
from feature_repo.store import UserFeatureStore, write_repo  # noqa: E402
from qanchor.modality_spec import load_spec  # noqa: E402
from qanchor.synthetic.generator import DEFAULT_AS_OF, GeneratorConfig, generate  # noqa: E402

BATCHES = (1, 32, 1000)


def _redis(tmp: Path) -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp)],
                            stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _time(store: UserFeatureStore, users: list[str], batch: int, repeats: int, rng: np.random.Generator) -> np.ndarray:
    store.online_rows(users[:batch])  # warm-up: connections, registry cache
    samples = []
    for _ in range(repeats):
        chosen = rng.choice(users, size=batch, replace=False).tolist()
        start = time.perf_counter()
        store.online_rows(chosen)
        samples.append((time.perf_counter() - start) * 1000)
    return np.asarray(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        generate(GeneratorConfig(users=args.users, seed=3), tmp / "raw", progress=False)
        import_data(ImportConfig(events=tmp / "raw" / "events", profiles=tmp / "raw" / "profiles",
                                 out=tmp / "features", spec=load_spec(), as_of=DEFAULT_AS_OF), progress=False)
        users = [f"u{i:09d}" for i in range(args.users)]
        backends = {"sqlite": write_repo(tmp / "sqlite", tmp / "features")}
        redis = _redis(tmp)
        if redis:
            backends["redis"] = write_repo(tmp / "redis", tmp / "features", online_store="redis", redis_url=redis[1])
        results: dict[tuple[str, int], np.ndarray] = {}
        try:
            for name, repo in backends.items():
                store = UserFeatureStore(repo)
                store.apply()
                store.materialize()
                for batch in BATCHES:
                    repeats = max(5, args.repeats // (1 + batch // 100))
                    results[(name, batch)] = _time(store, users, batch, repeats, rng)
        finally:
            if redis:
                redis[0].terminate()
    rows = []
    for (name, batch), ms in results.items():
        base = results[("sqlite", batch)]
        rows.append({"backend": name, "batch": batch, "repeats": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "users_per_s": batch / (np.median(ms) / 1000),
                     "p50_vs_sqlite": float(np.percentile(ms, 50) / np.percentile(base, 50))})
    emit("feature_fetch", rows, {"users": args.users, "redis": bool(redis),
                                 "note": "same process, loopback Redis; each batch of random distinct users"})


if __name__ == "__main__":
    main()
