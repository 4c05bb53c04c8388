"""The `qanchor` command line: every command documents itself and bad flags fail cleanly."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qanchor.cli import cli

COMMANDS = [[], ["data"], ["data", "generate"], ["data", "import"], ["data", "validate"], ["data", "rates"],
            ["data", "corpus"], ["data", "labels"],
            ["features"], ["features", "apply"], ["features", "materialize"], ["features", "show"],
            ["pretrain"], ["promote"], ["scenario"], ["scenario", "register"], ["scenario", "list"], ["scenario", "show"],
            ["scenario", "archive"], ["evaluate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "qanchor")
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_generate_then_rates(tmp_path):
    runner = CliRunner()
    out = tmp_path / "raw"
    result = runner.invoke(cli, ["data", "generate", "--users", "50", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rates = runner.invoke(cli, ["data", "rates", str(out)])
    assert rates.exit_code == 0 and "risk_overdue" in rates.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "generate", "--users", "0", "--out", "x"], "0 is not in the range x>=1"),
        (["data", "generate", "--users", "5"], "Missing option '--out'"),
        (["data", "import", "--events", "nope", "--profiles", "nope", "--out", "o", "--as-of", "2026-10-01"],
         "profiles path nope does not exist"),
        (["data", "import", "--events", "e", "--profiles", "p", "--out", "o", "--spec", "absent.yaml"],
         "modality spec absent.yaml does not exist"),
    ],
)
def test_bad_flags_give_specific_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_import_failure_writes_report_and_nothing_else(tmp_path, dataset):
    import pandas as pd

    events = pd.read_parquet(dataset / "events").head(500)
    events.loc[events.index[:2], "modality"] = "tiktok"
    events.to_parquet(tmp_path / "events.parquet", index=False)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["data", "import", "--events", str(tmp_path / "events.parquet"),
                                      "--profiles", str(dataset / "profiles"), "--out", str(tmp_path / "features"),
                                      "--as-of", "2026-10-01", "--report", str(report)])
    assert result.exit_code == 1
    assert ("expect_column_values_to_be_in_set(modality) value_set=[bill, mini, spm, app, search]: "
            "2 offending rows; e.g. user_id=") in result.output
    assert '"unexpected_count": 2' in report.read_text()
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("group", [[], ["data"], ["features"], ["scenario"]], ids=lambda g: " ".join(g) or "qanchor")
def test_listing_commands_imports_none_of_them(group):
    """`qanchor --help` reads one-line helps from source: no torch, MLflow, Feast or pandas import."""
    import subprocess
    import sys

    probe = ("import sys; from qanchor.cli import cli; "
             f"cli.main({[*group, '--help']!r}, standalone_mode=False); "
             "heavy = sorted({'torch', 'mlflow', 'feast', 'pandas', 'transformers', 'great_expectations'} & set(sys.modules)); "
             "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_source_help_matches_the_loaded_command():
    """The help read from source is what click itself would print once the command is loaded."""
    from importlib.metadata import entry_points

    import click

    from qanchor.cli import source_help

    for ep in entry_points(group="qanchor.commands"):
        command = ep.load()
        lazy = click.utils.make_default_short_help(source_help(ep.value), 60)
        assert lazy == command.get_short_help_str(60), ep.name
