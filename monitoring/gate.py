"""Gating on the drift check: the newest `drift.json` of a feature repository decides.

Kept free of GE, Feast and MLflow imports so `qanchor pretrain`, `qanchor promote`, the serving
image and a CronJob can all read a check's outcome cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DRIFT_FILE = "drift.json"


class DriftGateError(RuntimeError):
    """A gated action refused because the newest drift check failed (pass --force to override)."""


@dataclass(frozen=True)
class CheckOutcome:
    """The newest drift check of a repository: its date, verdict and what failed."""

    date: str
    success: bool
    path: Path
    failed: tuple[str, ...]

    def describe(self) -> str:
        what = f": {', '.join(self.failed[:8])}{' ...' if len(self.failed) > 8 else ''}" if self.failed else ""
        return f"drift check {self.date} {'passed' if self.success else 'FAILED'}{what} ({self.path})"


def checks_folder(repo: Path) -> Path:
    return Path(repo) / "monitoring" / "checks"


def check_folder(repo: Path, date: str) -> Path:
    return checks_folder(repo) / date


def read_outcome(path: Path) -> CheckOutcome:
    report = json.loads(Path(path).read_text())
    failed = tuple(report.get("failed_features", [])) + tuple(f"embeddings[{s}]" for s in report.get("failed_embeddings", []))
    return CheckOutcome(report["date"], bool(report["success"]), Path(path), failed)


def newest_report(repo: Path) -> Path | None:
    """The `drift.json` of the newest check (by date) under the repository's `monitoring/checks/`."""
    reports = sorted(checks_folder(repo).glob(f"*/{DRIFT_FILE}"), key=lambda p: p.parent.name)
    return reports[-1] if reports else None


def latest_check(repo: Path) -> CheckOutcome | None:
    """The newest check's outcome, or None if the repository was never checked."""
    newest = newest_report(repo)
    return read_outcome(newest) if newest else None


def require_passing_check(repo: Path, force: bool, action: str) -> CheckOutcome | None:
    """The newest check; raises DriftGateError if it failed and `force` is off."""
    outcome = latest_check(repo)
    if outcome is not None and not outcome.success and not force:
        raise DriftGateError(f"{action} refused: {outcome.describe()}; investigate it, or pass --force "
                             "(the override is logged to MLflow)")
    return outcome


def gate_tags(outcome: CheckOutcome | None, forced: bool) -> dict[str, str]:
    """MLflow tags recording which check a run was gated on and whether it was overridden."""
    if outcome is None:
        return {"drift_check": "none"}
    return {"drift_check": "passed" if outcome.success else "failed", "drift_check_date": outcome.date,
            "drift_check_forced": str(forced and not outcome.success).lower()}
