"""Drift injection: change the generated behaviour from a given date, so the monitor has known drifts to find.

Four kinds, each written `KIND:ARGUMENT@YYYY-MM-DD` on the command line:

- `spend:1.3@2026-09-20`          every payment from that date costs 30% more (amount and text)
- `new-app:FlashLoan@2026-09-20`  a new app that `share` (default 40%) of users install after that date
- `silent:search@2026-09-20`      a modality stops producing events (a broken logging pipeline)
- `trait:travel+1.5@2026-09-20`   a latent trait shifts for everyone; events after the date are
                                  redrawn from the shifted traits (a seasonal or market change)

Drifts change the observed window only (what `data import` and the monitor read); the future
window and its labels stay as drawn, so a drifted dataset is for monitoring, not for training.
They use their own random stream, so a dataset without drifts is byte-identical to before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import numpy as np
import pandas as pd

from qanchor.synthetic.catalog import EVENT_RATES, T, TRAITS

DriftKind = Literal["spend", "new-app", "silent", "trait"]
_PATTERN = re.compile(r"^(?P<kind>spend|new-app|silent|trait):(?P<arg>[^@]+)@(?P<date>\d{4}-\d{2}-\d{2})$")
_TRAIT = re.compile(r"^(?P<name>[a-z_]+)(?P<delta>[+-]\d+(?:\.\d+)?)$")
_AMOUNT = re.compile(r"^paid \d+(?:\.\d+)? ")
#: Share of users who install the new app of a `new-app` drift.
NEW_APP_SHARE = 0.4


class DriftSpecError(ValueError):
    """A `--drift` value that does not parse or names something the generator does not have."""


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    start: datetime
    factor: float = 1.0
    name: str = ""
    delta: float = 0.0

    def describe(self) -> str:
        argument = {"spend": f"{self.factor:g}", "new-app": self.name, "silent": self.name,
                    "trait": f"{self.name}{self.delta:+g}"}[self.kind]
        return f"{self.kind}:{argument}@{self.start:%Y-%m-%d}"


def parse_drift(text: str) -> Drift:
    """`KIND:ARGUMENT@YYYY-MM-DD` (see the module docstring) as a Drift."""
    match = _PATTERN.match(text.strip())
    if match is None:
        raise DriftSpecError(f"--drift {text!r}: expected KIND:ARGUMENT@YYYY-MM-DD with KIND one of "
                             "spend, new-app, silent, trait (e.g. spend:1.3@2026-09-20)")
    kind, arg = match["kind"], match["arg"].strip()
    try:
        start = datetime.strptime(match["date"], "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise DriftSpecError(f"--drift {text!r}: {match['date']} is not a date") from None
    if kind == "spend":
        try:
            factor = float(arg)
        except ValueError:
            raise DriftSpecError(f"--drift {text!r}: spend needs a positive factor, e.g. spend:1.3@...") from None
        if not factor > 0:
            raise DriftSpecError(f"--drift {text!r}: the spend factor must be positive")
        return Drift("spend", start, factor=factor)
    if kind == "silent":
        if arg not in EVENT_RATES:
            raise DriftSpecError(f"--drift {text!r}: no modality {arg!r} (have {', '.join(EVENT_RATES)})")
        return Drift("silent", start, name=arg)
    if kind == "trait":
        parsed = _TRAIT.match(arg)
        if parsed is None or parsed["name"] not in T:
            raise DriftSpecError(f"--drift {text!r}: expected TRAIT+DELTA with TRAIT one of {', '.join(TRAITS)}")
        return Drift("trait", start, name=parsed["name"], delta=float(parsed["delta"]))
    return Drift("new-app", start, name=arg)


def apply_drifts(rng: np.random.Generator, events: pd.DataFrame, drifts: tuple[Drift, ...], user_ids: np.ndarray,
                 traits: np.ndarray, as_of: pd.Timestamp, redraw) -> pd.DataFrame:
    """`events` with each drift applied from its start date; `redraw(traits, start, days)` draws a window."""
    for drift in drifts:
        start = pd.Timestamp(drift.start)
        if start >= as_of:
            continue
        after = events["event_time"] >= start
        if drift.kind == "spend":
            bill = after & (events["modality"] == "bill")
            amount = (events.loc[bill, "amount"] * drift.factor).round(2)
            events.loc[bill, "amount"] = amount
            events.loc[bill, "text"] = [f"paid {a:.2f} " + _AMOUNT.sub("", t)
                                        for a, t in zip(amount, events.loc[bill, "text"])]
        elif drift.kind == "silent":
            events = events[~(after & (events["modality"] == drift.name))]
        elif drift.kind == "new-app":
            adopters = user_ids[rng.random(len(user_ids)) < NEW_APP_SHARE]
            seconds = rng.uniform(start.value // 10**9, as_of.value // 10**9, len(adopters)).astype(np.int64)
            installs = pd.DataFrame({"user_id": adopters, "event_time": pd.to_datetime(seconds, unit="s", utc=True),
                                     "modality": "app", "text": f"installed {drift.name} (new)", "category": "new",
                                     "amount": np.nan, "duration_s": np.nan, "dwell_s": np.nan})
            events = pd.concat([events, installs], ignore_index=True)
        else:
            shifted = traits.copy()
            shifted[:, T[drift.name]] += drift.delta
            days = int((as_of - start) / pd.Timedelta(days=1))
            events = pd.concat([events[~after], redraw(shifted, start, days)], ignore_index=True)
    return events.sort_values(["user_id", "event_time"], kind="stable", ignore_index=True)
