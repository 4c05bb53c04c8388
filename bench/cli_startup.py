"""How long `qanchor --help` and each `qanchor GROUP --help` take, against bare interpreter start-up.

Each command runs in a fresh process `--repeats` times (median reported). The baseline is
`python -c pass` measured in the same run, so the ratio stays meaningful on a noisy machine;
the target is under 0.5 s per listing (a leaf command's own `--help` loads its module and is
listed for comparison, not held to it).

    python bench/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

LISTINGS = [[], ["data"], ["features"], ["scenario"]]
LEAVES = [["pretrain"], ["data", "import"]]


def _median_seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    baseline = _median_seconds([sys.executable, "-c", "pass"], args.repeats)
    rows = [{"command": "python -c pass (baseline)", "seconds": baseline, "x_baseline": 1.0, "target": ""}]
    for group, held in [(g, True) for g in LISTINGS] + [(g, False) for g in LEAVES]:
        seconds = _median_seconds([sys.executable, "-m", "qanchor", *group, "--help"], args.repeats)
        rows.append({"command": " ".join(["qanchor", *group, "--help"]), "seconds": seconds,
                     "x_baseline": seconds / baseline, "target": ("met" if seconds < 0.5 else "MISSED") if held else "-"})
    emit("cli_startup", rows, {"repeats": args.repeats, "python": sys.version.split()[0]})


if __name__ == "__main__":
    main()
