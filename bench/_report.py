"""Shared output for bench scripts: a printed table plus a JSON file under bench/results/."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    """The accelerator a figure was measured on ("cpu" without one), for every result's metadata."""
    import torch  # here, not at the top: benches without a model import this module too

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def emit(name: str, rows: list[dict], meta: dict, show: bool = True) -> Path:
    """Write bench/results/<name>.json and, with `show`, print the table. A long benchmark calls it
    with show=False after each finished part, so a run cut short still leaves what it measured."""
    if show:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
        print(" | ".join(c.ljust(widths[c]) for c in columns))
        print("-+-".join("-" * widths[c] for c in columns))
        for row in rows:
            print(" | ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": datetime.now(timezone.utc).isoformat(), "machine": platform.node(),
               "cpu_count": __import__("os").cpu_count(), **meta, "rows": rows}
    out.write_text(json.dumps(payload, indent=2))
    if show:
        print(f"\nwrote {out}")
    return out


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)
