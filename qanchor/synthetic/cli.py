"""`qanchor data generate` and `qanchor data rates`."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from qanchor.synthetic.drift import DriftSpecError, parse_drift
from qanchor.synthetic.generator import DEFAULT_AS_OF, GeneratorConfig, generate as generate_dataset
from qanchor.synthetic.tasks import TASKS


@click.command("generate")
@click.option("--users", type=click.IntRange(min=1), required=True, help="Number of users to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives the same data.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--as-of", type=click.DateTime(formats=["%Y-%m-%d"]), default=DEFAULT_AS_OF.strftime("%Y-%m-%d"),
              show_default=True, help="End of the observation window (UTC); the future window starts here.")
@click.option("--chunk-users", type=click.IntRange(min=1), default=5_000, show_default=True,
              help="Users generated and written per chunk; bounds memory.")
@click.option("--uqa-per-user", type=click.IntRange(1, 13), default=3, show_default=True,
              help="Grounded questions per user in D_uqa.")
@click.option("--future-questions", type=click.IntRange(0, 16), default=0, show_default=True,
              help="Yes/no D_future questions per user, each about one kind of the future window "
                   "('Will this user pay for refills in the next 30 days?'), beside the summary.")
@click.option("--summary-names-markers/--summary-by-frequency", default=True, show_default=True,
              help="Whether the generic D_future answer names every task marker and scheduled payment of the "
                   "user's future (the downstream labels), or only the behaviours that rank there by frequency, "
                   "as a corpus written before its scenarios were known would.")
@click.option("--drift", "drifts", multiple=True, metavar="KIND:ARG@DATE",
              help="Inject a drift into the observed window from DATE (repeatable): spend:1.3@2026-09-20, "
                   "new-app:FlashLoan@2026-09-20, silent:search@2026-09-20, trait:travel+1.5@2026-09-20.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it already holds data.")
def generate(users: int, seed: int, out: Path, as_of: datetime, chunk_users: int, uqa_per_user: int,
             future_questions: int, summary_names_markers: bool, drifts: tuple[str, ...], overwrite: bool) -> None:
    """Generate a synthetic UserU dataset: events, profiles, D_future, D_uqa and task labels."""
    try:
        parsed = tuple(parse_drift(d) for d in drifts)
    except DriftSpecError as err:
        raise click.BadParameter(str(err), param_hint="--drift") from None
    config = GeneratorConfig(users=users, seed=seed, as_of=as_of.replace(tzinfo=timezone.utc),
                             chunk_users=chunk_users, uqa_per_user=uqa_per_user,
                             future_questions_per_user=future_questions, summary_names_markers=summary_names_markers,
                             drifts=parsed)
    try:
        manifest = generate_dataset(config, out, overwrite=overwrite)
    except FileExistsError as err:
        raise click.UsageError(str(err)) from None
    rows = manifest["rows"]
    click.echo(f"wrote {rows['users']} users, {rows['events']} events, {rows['d_future']} D_future and "
               f"{rows['d_uqa']} D_uqa rows to {out}")


def _manifest(dataset: Path) -> dict:
    """The generator's manifest, or a usage error saying the folder is not a generated dataset."""
    manifest_path = dataset / "manifest.json"
    if not manifest_path.is_file():
        raise click.UsageError(f"{dataset} has no manifest.json; is it a `qanchor data generate` output?")
    return json.loads(manifest_path.read_text())


@click.command("rates")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
def rates(dataset: Path) -> None:
    """Print the downstream tasks with their definitions and observed positive rates."""
    observed = _manifest(dataset)["positive_rates"]
    click.echo(f"{'task':<24} {'group':<11} {'target':>7} {'observed':>9}  definition")
    for task in TASKS:
        click.echo(f"{task.name:<24} {task.group:<11} {task.target_rate:>7.1%} {observed[task.name]:>9.1%}  {task.definition}")
