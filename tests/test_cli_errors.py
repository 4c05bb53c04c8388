"""Every command turns a bad file or folder into a one-line usage error (exit 2) naming it.

Each command that reads a user's path is walked with a path that does not exist, a file of
the wrong format and an empty file (or an empty folder where a folder is expected). None may
end in a traceback, and none may write its output.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qanchor.cli import cli


@pytest.fixture()
def bad(tmp_path) -> dict[str, str]:
    (tmp_path / "empty.file").write_bytes(b"")
    (tmp_path / "csv.parquet").write_text("user_id,label\nu1,1\n")
    (tmp_path / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    (tmp_path / "broken.yaml").write_text("steps: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "empty_dir").mkdir()
    return {name: str(tmp_path / name) for name in
            ["absent", "empty.file", "csv.parquet", "binary.yaml", "broken.yaml", "list.yaml", "empty_dir"]}


FILE_KINDS = ["absent", "empty.file", "csv.parquet", "empty_dir"]
YAML_KINDS = ["absent", "empty.file", "binary.yaml", "broken.yaml", "list.yaml", "empty_dir"]
FOLDER_KINDS = ["absent", "empty.file", "empty_dir"]


def _cases():
    commands = {
        "data import --events": (FILE_KINDS, lambda p, repo, out: [
            "data", "import", "--events", p, "--profiles", p, "--out", out, "--as-of", "2026-10-01"]),
        "data import --spec": (YAML_KINDS, lambda p, repo, out: [
            "data", "import", "--events", p, "--profiles", p, "--spec", p, "--out", out, "--as-of", "2026-10-01"]),
        "data validate --events": (FILE_KINDS, lambda p, repo, out: [
            "data", "validate", "--events", p, "--as-of", "2026-10-01", "--report", out]),
        "data validate --spec": (YAML_KINDS, lambda p, repo, out: [
            "data", "validate", "--profiles", p, "--spec", p, "--as-of", "2026-10-01", "--report", out]),
        "data rates": (FOLDER_KINDS, lambda p, repo, out: ["data", "rates", p]),
        "data labels": (FOLDER_KINDS, lambda p, repo, out: ["data", "labels", p, "--task", "risk_overdue", "--out", out]),
        "data corpus --repo": (FOLDER_KINDS, lambda p, repo, out: ["data", "corpus", "--repo", p, "--out", out]),
        "data labels --rule": (YAML_KINDS, lambda p, repo, out: [
            "data", "labels", "--rule", p, "--events", repo, "--repo", repo, "--out", out]),
        "features apply --data": (FOLDER_KINDS, lambda p, repo, out: ["features", "apply", "--data", p, "--repo", out]),
        "features materialize": (FOLDER_KINDS, lambda p, repo, out: ["features", "materialize", "--repo", p]),
        "features show": (FOLDER_KINDS, lambda p, repo, out: ["features", "show", "--repo", p, "--sample", "1"]),
        "pretrain --config": (YAML_KINDS, lambda p, repo, out: ["pretrain", "--config", p]),
        "scenario register --labels": (FILE_KINDS, lambda p, repo, out: [
            "scenario", "register", "--name", "bad_labels", "--query", "q?", "--labels", p, "--repo", repo]),
        "scenario register --repo": (FOLDER_KINDS, lambda p, repo, out: [
            "scenario", "register", "--name", "bad_repo", "--query", "q?", "--repo", p]),
        "evaluate --repo": (FOLDER_KINDS, lambda p, repo, out: ["evaluate", "--repo", p, "--dataset", p, "--out", out]),
        "score-batch --repo": (FOLDER_KINDS, lambda p, repo, out: ["score-batch", "--repo", p, "--out", out]),
        "serve --repo": (FOLDER_KINDS, lambda p, repo, out: ["serve", "--repo", p]),
    }
    for name, (kinds, build) in commands.items():
        for kind in kinds:
            yield pytest.param(build, kind, id=f"{name} <{kind}>")


@pytest.mark.parametrize(("build", "kind"), list(_cases()))
def test_a_bad_path_is_a_one_line_usage_error(tmp_path, monkeypatch, bad, sqlite_store, build, kind):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    out = tmp_path / "output"
    result = CliRunner().invoke(cli, build(bad[kind], str(sqlite_store.repo), str(out)))

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback instead of an error: {result.exception!r}"
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and bad[kind].rsplit("/", 1)[-1] in error[0], result.output
    assert not out.exists(), "a failed command writes nothing"
