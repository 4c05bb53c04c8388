"""The closing block of `make demo`: where the time went, what now exists, what to run next.

Reads the step timings the Makefile appended (`LABEL<TAB>milliseconds` per line) and prints
them as a table with each step's share, then the artefacts the demo left behind.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def timing_table(lines: list[str]) -> str:
    """A fixed-width table of (step, seconds, share of the total), plus the total."""
    steps = [(label, int(ms) / 1000) for label, ms in (line.rstrip("\n").split("\t") for line in lines if line.strip())]
    total = sum(seconds for _, seconds in steps) or 1.0
    width = max([len(label) for label, _ in steps] + [5])
    rows = [f"{label:<{width}}  {seconds:7.1f} s  {seconds / total:6.1%}" for label, seconds in steps]
    return "\n".join([*rows, f"{'total':<{width}}  {total:7.1f} s"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    print("\n== demo steps ==")
    print(timing_table(args.timings.read_text().splitlines()))
    print(f"""
== what now exists ==
  Feast repository      {args.repo}  (SQLite online store, DuckDB offline reads)
  MLflow store          sqlite:///mlruns.db, artifacts in mlartifacts/
                        qanchor-backbone@challenger, qanchor-scenario-travel_booking, -cash_advance, -night_activity
  evaluation report     {args.report / 'report.md'}  (JSON and plots beside it)

== next ==
  browse runs           .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db   # http://127.0.0.1:5000
  serve                 .venv/bin/qanchor serve --alias challenger --repo {args.repo}   # http://127.0.0.1:3000
  query                 curl -s -X POST http://127.0.0.1:3000/score -H 'Content-Type: application/json' \\
                          -d '{{"user_ids": ["u000000000"], "scenarios": ["travel_booking", "cash_advance"]}}'
  your own data         README.md, "Bring your own data"
""")


if __name__ == "__main__":
    main()
