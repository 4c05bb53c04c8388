"""`qanchor data import` and `qanchor features apply | materialize | show`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from feature_repo.ingest import ImportConfig, default_as_of, import_data as run_import
from feature_repo.layout import FeatureRepoError
from feature_repo.params import FEATURE_REPO, IMPORTED_FEATURES
from monitoring.validation import DataValidationError
from qanchor.modality_spec import ModalitySpecError, load_spec
from qanchor.user_files import UserFileError

_REPO_OPTION = click.option("--repo", type=FEATURE_REPO, required=True,
                            help="Feast repository directory (created by `features apply`).")


@click.command("import")
@click.option("--events", type=click.Path(path_type=Path), required=True, help="Event parquet file or directory.")
@click.option("--profiles", type=click.Path(path_type=Path), required=True, help="Profile parquet file or directory.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for the Feast sources (replaced atomically).")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Modality spec YAML; default: the six paper modalities.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="Newest snapshot time (UTC). Events at or after it are rejected. Default: today 00:00 UTC.")
@click.option("--snapshots", type=click.IntRange(min=1), default=2, show_default=True,
              help="Snapshots per user, spaced --snapshot-every days apart, for point-in-time training rows.")
@click.option("--snapshot-every", type=click.IntRange(min=1), default=30, show_default=True, help="Days between snapshots.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the validation report (JSON) here, pass or fail.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True, help="Replace existing sources in OUT.")
def import_data(events: Path, profiles: Path, out: Path, spec_path: Path | None, as_of: datetime | None,
                snapshots: int, snapshot_every: int, report: Path | None, overwrite: bool) -> None:
    """Validate event and profile tables (Great Expectations) and convert them into Feast sources.

    A failing batch is rejected with every failed expectation and its offending row count;
    nothing is written to OUT in that case.
    """
    try:
        spec = load_spec(spec_path)
        config = ImportConfig(events=events, profiles=profiles, out=out, spec=spec,
                              as_of=(as_of.replace(tzinfo=timezone.utc) if as_of else default_as_of()),
                              snapshots=snapshots, snapshot_every_days=snapshot_every)
        summary = run_import(config, overwrite=overwrite)
    except DataValidationError as err:
        if report:
            report.write_text(json.dumps([r.to_dict() for r in err.reports], indent=2))
        raise click.ClickException(str(err)) from None
    except UserFileError:
        raise
    except (ModalitySpecError, FileExistsError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    if report:
        report.write_text(json.dumps([r.to_dict() for r in summary.reports], indent=2))
    for r in summary.reports:
        click.echo(r.summary())
    click.echo(f"imported {summary.events} events of {summary.users} users into {out} "
               f"(feature version {summary.feature_version}; rows per view {summary.rows_per_view})")


@click.command("apply")
@click.option("--data", type=IMPORTED_FEATURES, required=True,
              help="Feature sources written by `qanchor data import`.")
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Feast repository directory to write (created or updated).")
@click.option("--online-store", type=click.Choice(["sqlite", "redis"]), default="sqlite", show_default=True)
@click.option("--redis-url", default="localhost:6379", show_default=True, help="host:port[,password=...] for Redis.")
@click.option("--project", default="qanchor", show_default=True, help="Feast project name.")
def apply(data: Path, repo: Path, online_store: str, redis_url: str, project: str) -> None:
    """Write a Feast repository over DATA and register its entity, views and feature service."""
    from feature_repo.store import UserFeatureStore, write_repo

    try:
        write_repo(repo, data, online_store=online_store, redis_url=redis_url, project=project)
        names = UserFeatureStore(repo).apply()
    except (FeatureRepoError, ModalitySpecError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"applied {len(names)} objects to {repo}: {', '.join(names)}")


@click.command("materialize")
@_REPO_OPTION
def materialize(repo: Path) -> None:
    """Load the newest snapshot of every user into the online store."""
    from feature_repo.store import UserFeatureStore

    store = UserFeatureStore(repo)
    store.materialize()
    click.echo(f"materialized feature version {store.feature_version} into the online store of {repo}")


@click.command("show")
@_REPO_OPTION
@click.option("--user", "users", multiple=True, help="User id to read (repeatable).")
@click.option("--sample", type=click.IntRange(min=0), default=0, help="Also read this many users from the sources.")
@click.option("--max-events", type=click.IntRange(min=1), default=5, show_default=True, help="Events printed per modality.")
def show(repo: Path, users: tuple[str, ...], sample: int, max_events: int) -> None:
    """Read users' online features and print them per modality."""
    import pandas as pd

    from feature_repo.objects import PROFILE_VIEW
    from feature_repo.store import UserFeatureStore

    store = UserFeatureStore(repo)
    wanted = list(users)
    if sample:
        wanted += pd.read_parquet(store.settings.data / PROFILE_VIEW, columns=["user_id"])["user_id"].head(sample).tolist()
    if not wanted:
        raise click.UsageError("name users with --user or ask for --sample N")
    for features in store.online(wanted):
        click.echo(f"user {features.user_id}" + ("  (unknown to the online store)" if features.is_empty else ""))
        click.echo("  profile: " + ", ".join(f"{k}={v}" for k, v in features.profile.items()))
        for name, events in features.modalities.items():
            past = features.history.get(name)
            whole = f"; window: {past.events} events of {len(past)} kinds" if past is not None else ""
            click.echo(f"  {name}: last {len(events)} events{whole}")
            for text in events.texts[-max_events:]:
                click.echo(f"    - {text}")
            if past is not None and len(past):
                top = max(past.counts)
                click.echo("    most frequent over the window: " + "; ".join(
                    f"{kind} x{count}" for kind, count in zip(past.kinds[:3], past.counts[top][:3])))
