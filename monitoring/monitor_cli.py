"""`qanchor monitor build-reference` and `qanchor monitor check`: the daily drift gate."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

import click
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from feature_repo.layout import DATA_MANIFEST, repo_settings
from feature_repo.params import FEATURE_REPO
from monitoring.drift_config import load_thresholds
from monitoring.reference import DriftReferenceError, Reference, build_reference, reference_folder
from monitoring.snapshot_profile import MonitorInputError, SnapshotProfile, read_snapshot, snapshot_at, snapshot_times
from qanchor.modality_spec import ModalitySpec, parse_spec

THRESHOLDS_OPTION = click.option("--thresholds", "thresholds_path", type=click.Path(dir_okay=False, path_type=Path),
                                 default=None, help="Drift thresholds YAML (see monitoring/drift_config.py); default: built in.")


def _store_data(repo: Path) -> tuple[Path, ModalitySpec, str]:
    _, data = repo_settings(repo)
    manifest = json.loads((data / DATA_MANIFEST).read_text())
    return data, parse_spec(manifest["spec"], str(data / DATA_MANIFEST)), manifest["feature_version"]


def _backbone_run(alias_or_version: str) -> tuple[str, str, Path | None]:
    """(version, feature_version, feature repo its pretraining run read) of a registered backbone."""
    from training import registry

    version = registry.backbone_version(alias_or_version)
    tags = registry.client().get_model_version(registry.BACKBONE_MODEL, version).tags
    return version, tags.get("feature_version", ""), registry.training_repo(version)


def _embed_sample(version: str, repo: Path, users: np.ndarray, snapshot: pd.Timestamp, count: int, seed: int,
                  scenario_versions: dict[str, str] | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Vectors of a seeded user sample under every scenario of the backbone (or the given versions)."""
    from feature_repo.store import UserFeatureStore
    from monitoring.embedding_drift import sample_users
    from qanchor.embedding_engine import EmbeddingEngine
    from training import registry

    if scenario_versions is None:
        scenario_versions = {row.name: row.version for row in registry.scenarios_for_backbone(version)}
    if not scenario_versions:
        return {}, {}
    model = registry.load_model(version)
    scenarios = {name: registry.load_scenario(name, v) for name, v in scenario_versions.items()}
    engine = EmbeddingEngine(model, cache=None)
    suffixes = [engine.scenario_suffix(s) for s in scenarios.values()]
    ids = sample_users(users, count, seed)
    features = UserFeatureStore(repo).features_at(ids, [snapshot] * len(ids))
    vectors = engine.embed(features, [int(snapshot.timestamp())] * len(features), suffixes)
    return {name: vectors[:, i] for i, name in enumerate(scenarios)}, scenario_versions


def _profile(data: Path, spec: ModalitySpec, snapshots: list[pd.Timestamp], recent_days: int) -> SnapshotProfile:
    pooled = None
    for snapshot in tqdm(snapshots, desc="read snapshots", unit="snapshot", disable=len(snapshots) < 2):
        profile = read_snapshot(data, spec, snapshot, recent_days)
        pooled = profile if pooled is None else pooled.merge(profile)
    return pooled


@click.command("build-reference", short_help="Freeze the backbone's training data as drift reference.")
@click.option("--backbone", default="champion", show_default=True, help="Backbone alias or version.")
@click.option("--repo", type=FEATURE_REPO, default=None,
              help="Feature repository it was trained on; default: the one its pretraining run names.")
@click.option("--snapshots", type=click.Choice(["latest", "all"]), default="latest", show_default=True,
              help="Reference snapshot(s): the newest one the backbone trained on, or all of them pooled.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Reference folder; default: REPO/monitoring/reference/v<version>.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the value and user samples.")
@THRESHOLDS_OPTION
def build_reference_command(backbone: str, repo: Path | None, snapshots: str, out: Path | None, seed: int,
                            thresholds_path: Path | None) -> None:
    """Build the drift reference of a registered backbone from the snapshot it was trained on.

    Keeps per-feature statistics, value samples, the event-kind vocabulary, the GE suites and,
    when the backbone has scenarios, a sample of their embeddings.
    """
    from monitoring.drift_suites import build_suites, suite_documents
    from training.tracking import TrackingError

    thresholds = load_thresholds(thresholds_path)
    try:
        version, trained_on, run_repo = _backbone_run(backbone)
    except TrackingError as err:
        raise click.ClickException(str(err)) from None
    if repo is None:
        if run_repo is None:
            raise click.UsageError(f"backbone v{version}'s run names no feature repository; pass --repo")
        repo = FEATURE_REPO.convert(str(run_repo), None, None)
    data, spec, feature_version = _store_data(repo)
    if trained_on and trained_on != feature_version:
        raise click.ClickException(f"backbone v{version} was trained on feature version {trained_on}, but {repo} "
                                   f"now holds {feature_version}; build the reference from the store it trained on")
    times = snapshot_times(data, spec)
    chosen = times if snapshots == "all" else times[-1:]
    try:
        profile = _profile(data, spec, chosen, thresholds.recent_days)
    except MonitorInputError as err:
        raise click.ClickException(str(err)) from None
    reference = build_reference(profile, thresholds, version, feature_version, repo, seed)
    reference.embeddings, reference.scenarios = _embed_sample(version, repo, profile.users, chosen[-1],
                                                              thresholds.embedding_users, seed, None)
    folder = reference.save(out or reference_folder(repo, version), suite_documents(build_suites(reference, thresholds)))
    click.echo(f"reference for qanchor-backbone v{version} from {', '.join(t.strftime('%Y-%m-%d') for t in chosen)}: "
               f"{len(reference.numeric)} numeric and {len(reference.categorical)} categorical features, "
               f"{len(reference.embeddings)} scenarios' embeddings -> {folder}")


@click.command("check", short_help="Check a day's features and embeddings for drift.")
@click.option("--date", "day", type=click.DateTime(formats=["%Y-%m-%d"]), required=True,
              help="Day to check: the store's snapshot stamped on it (UTC).")
@click.option("--repo", type=FEATURE_REPO, required=True, help="Feature repository holding that day's snapshot.")
@click.option("--backbone", default="champion", show_default=True,
              help="Backbone alias or version whose reference to compare with.")
@click.option("--reference", "reference_path", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Reference folder; default: REPO/monitoring/reference/v<version>.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder; default: REPO/monitoring/checks/<date> (where gating reads it).")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the drift gauges here for node-exporter's textfile collector (*.prom).")
@click.option("--no-embeddings", is_flag=True, help="Skip embedding drift (no model forward pass).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the value and user samples.")
@THRESHOLDS_OPTION
def check_command(day: datetime, repo: Path, backbone: str, reference_path: Path | None, out: Path | None,
                  textfile: Path | None, no_embeddings: bool, seed: int, thresholds_path: Path | None) -> None:
    """Compare one day's snapshot with the backbone's reference: GE suites as Checkpoints, PSI/KS/JS,
    unseen event kinds, embedding drift per scenario.

    Writes drift.json, report.html and GE Data Docs; exits 1 when anything drifted, so a CronJob
    or pipeline can gate on it. Input it cannot judge (no snapshot that day, a changed schema,
    an all-null column, no reference) exits 2 and writes nothing.
    """
    from monitoring.drift_check import run_check, write_check
    from monitoring.drift_report_html import render_report
    from monitoring.embedding_drift import embedding_drift
    from monitoring.gate import check_folder
    from monitoring.metrics import write_textfile
    from training.tracking import TrackingError

    thresholds = load_thresholds(thresholds_path)
    date = day.strftime("%Y-%m-%d")
    try:
        folder = reference_path or reference_folder(repo, _backbone_run(backbone)[0])
        reference = Reference.load(folder)
        data, spec, _ = _store_data(repo)
        snapshot = snapshot_at(data, spec, pd.Timestamp(day, tz="UTC"))
        profile = read_snapshot(data, spec, snapshot, reference.recent_days)
    except (DriftReferenceError, MonitorInputError, TrackingError) as err:
        raise click.UsageError(str(err)) from None  # exit 2: "could not judge", never mistaken for drift (1)
    embeddings = []
    if reference.embeddings and not no_embeddings:
        current, _ = _embed_sample(reference.backbone_version, repo, profile.users, snapshot,
                                   thresholds.embedding_users, seed + 1, reference.scenarios)
        embeddings = [embedding_drift(name, reference.embeddings[name], current[name], thresholds, seed)
                      for name in reference.embeddings]
    with tempfile.TemporaryDirectory(prefix="qanchor-drift-") as tmp:
        docs = Path(tmp) / "data_docs"
        try:
            report = run_check(reference, profile, thresholds, date, embeddings, docs, seed)
        except MonitorInputError as err:
            raise click.UsageError(str(err)) from None
        written = write_check(out or check_folder(repo, date), report, lambda r: render_report(r, reference, profile), docs)
    if textfile is not None:
        write_textfile(report.to_dict(), textfile)
    click.echo(report.summary())
    click.echo(f"report: {written / 'report.html'}")
    if not report.success:
        raise SystemExit(1)
