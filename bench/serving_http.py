"""HTTP serving throughput and latency (CPU, the registered backbone; `make demo` registers one).

Starts `qanchor serve` on a free loopback port and sends POST /embed requests (one user, every
given scenario per request) from concurrent clients, twice over the same users: first cold (each
user's prefix is encoded: a cache miss), then warm (prefix KV from the cache). The cold pass is
the in-run baseline of the warm one.

    .venv/bin/python bench/serving_http.py --repo data/demo/feature_store --alias challenger \
        [--users 200] [--clients 8] [--scenarios travel_booking,"will this user apply for a loan?"]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

from feature_repo.objects import RepoSettings  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pass(base: str, users: list[str], scenarios: list[str], clients: int) -> dict:
    def call(user: str) -> tuple[int, float]:
        start = time.perf_counter()
        response = requests.post(base + "/embed", data=json.dumps({"user_ids": [user], "scenarios": scenarios}),
                                 headers={"Content-Type": "application/json"}, timeout=120)
        return response.status_code, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(call, users))
    wall = time.perf_counter() - start
    latency = np.array([t for _, t in results]) * 1000
    return {"requests": len(users), "errors": sum(s != 200 for s, _ in results), "req_per_s": len(users) / wall,
            "user_scenarios_per_s": len(users) * len(scenarios) / wall,
            "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="Feast repository the service reads.")
    parser.add_argument("--alias", default="challenger")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scenarios", default="travel_booking,will this user apply for a loan?",
                        help="Comma-separated registered names and/or free-text queries.")
    args = parser.parse_args()
    users = pd.read_parquet(RepoSettings.load(args.repo).data / "profile", columns=["user_id"])["user_id"]
    users = users.head(args.users).tolist()
    scenarios = args.scenarios.split(",")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "qanchor", "serve", "--alias", args.alias, "--repo", str(args.repo),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the service did not become ready in 300 s")
        cold = {"pass": "cold (prefix encoded)", **_pass(base, users, scenarios, args.clients)}
        warm = {"pass": "warm (prefix KV cached)", **_pass(base, users, scenarios, args.clients)}
        warm["speedup_vs_cold"] = warm["req_per_s"] / cold["req_per_s"]
    finally:
        server.terminate()
        server.wait(timeout=60)
    emit("serving_http", [cold, warm], {"repo": str(args.repo), "alias": args.alias, "clients": args.clients,
                                        "scenarios": scenarios, "device": "cpu"})


if __name__ == "__main__":
    main()
