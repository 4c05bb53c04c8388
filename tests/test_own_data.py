"""Bring your own data: logs of another shape go import -> corpus -> pretrain -> labels by rule ->
evaluate with no code of the synthetic generator (tests/own_data/pipeline.py, in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_own_logs_run_end_to_end_without_the_generator(tmp_path):
    pipeline = Path(__file__).with_name("own_data") / "pipeline.py"
    done = subprocess.run([sys.executable, str(pipeline), str(tmp_path)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["synthetic_imported"] == [], "evaluation and the own-data path must not need the generator"
    methods = {row["method"] for row in result["results"]["summary"]}
    assert {"gbdt_history", "static_query", "qanchor_query", "qanchor_prompt"} <= methods
    assert "qanchor_paraphrase" not in methods, "the task has no paraphrase, so that row is left out"
    assert result["results"]["test_users"] > 0


def _events():
    import pandas as pd

    t0 = pd.Timestamp("2026-06-01", tz="UTC")
    return pd.DataFrame({
        "user_id": ["a", "a", "b", "c", "c"],
        "event_time": [t0 + pd.Timedelta(days=d) for d in (-3, 5, 10, 12, 40)],
        "modality": ["basket", "basket", "basket", "coupon", "basket"],
        "text": ["bought baby food", "bought Baby Food", "bought milk", "redeemed diaper deal", "bought baby food"],
        "spend": [4.0, 30.0, 60.0, None, 9.0],
    }), t0


def test_a_rule_counts_matching_events_inside_the_window_only():
    """a: one match inside (the day -3 one is before the window); c: its match is after it."""
    from training.label_rules import LabelRule, apply_rule

    events, t0 = _events()
    by_text = apply_rule(LabelRule(modality="basket", text_pattern="baby food"), events, ["a", "b", "c", "d"], t0)
    assert dict(zip(by_text.user_id, by_text.label)) == {"a": 1, "b": 0, "c": 0, "d": 0}
    assert (by_text.label_time == t0).all()
    by_amount = apply_rule(LabelRule(modality="basket", numeric={"field": "spend", "op": ">=", "value": 50}),
                           events, ["a", "b"], t0)
    assert dict(zip(by_amount.user_id, by_amount.label)) == {"a": 0, "b": 1}


def test_a_rule_that_cannot_be_applied_says_why():
    import pytest

    from qanchor.modality_spec import load_spec
    from training.label_rules import LabelRule, LabelRuleError, apply_rule

    events, t0 = _events()
    with pytest.raises(LabelRuleError, match="ends after the export's newest event"):
        apply_rule(LabelRule(modality="basket", text_pattern="x", window_days=60), events, ["a"], t0)
    with pytest.raises(LabelRuleError, match="not an event modality"):
        LabelRule(modality="basket", text_pattern="x").check_against(load_spec())
    with pytest.raises(ValueError, match="needs a text_pattern, a numeric condition"):
        LabelRule(modality="bill")
    with pytest.raises(ValueError, match="not a regular expression"):
        LabelRule(modality="bill", text_pattern="(")
