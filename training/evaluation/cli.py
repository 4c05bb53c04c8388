"""`qanchor evaluate`: one command from a backbone to a report folder (and an MLflow run)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from feature_repo.params import FEATURE_REPO

EXPERIMENT = "qanchor-evaluation"


@click.command("evaluate")
@click.option("--backbone", default="champion", show_default=True,
              help="Registered backbone alias or version, or a saved model directory.")
@click.option("--repo", type=FEATURE_REPO, required=True,
              help="Feast repository the users' features come from.")
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder with splits/ (held-out users are evaluated) and, by default, tasks.yaml.")
@click.option("--tasks", default="all", show_default=True,
              help="A tasks YAML file (name, query, label table per task), or comma-separated names from "
                   "DATASET/tasks.yaml, or 'all'.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder. Default: reports/<UTC timestamp>.")
@click.option("--max-users", type=click.IntRange(min=40), default=None, help="Evaluate at most this many held-out users.")
@click.option("--tune-steps", type=click.IntRange(min=1), default=150, show_default=True, help="Prompt-tuning steps per task.")
@click.option("--tokens", type=click.IntRange(1, 64), default=6, show_default=True, help="Soft-prompt vectors.")
@click.option("--resamples", type=click.IntRange(min=10), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--baselines/--no-baselines", default=True, show_default=True, help="LightGBM and MiniLM baselines.")
@click.option("--text-baseline/--no-text-baseline", default=True, show_default=True,
              help="The MiniLM row (six 256-token sections per user: about an hour per 5,000 users on 2 CPU cores).")
@click.option("--gbdt-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="LightGBM fits averaged per baseline row: one fit's per-task AUC moves by up to 0.08 between "
                   "seeds on tasks with few positives; 5 gives the stabler, stronger bagged baseline (5x its time).")
@click.option("--prefix-probe/--no-prefix-probe", default=True, show_default=True,
              help="The qanchor_prefix row: a probe on the encoder's summary tokens (where a lost signal is lost).")
@click.option("--tuning/--no-tuning", default=True, show_default=True, help="Tune a soft prompt per task.")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--mlflow/--no-mlflow", "log_mlflow", default=True, show_default=True,
              help=f"Log the report to the MLflow experiment {EXPERIMENT}.")
def evaluate(backbone: str, repo: Path, dataset: Path, tasks: str, out: Path | None, max_users: int | None,
             tune_steps: int, tokens: int, resamples: int, seed: int, baselines: bool, text_baseline: bool,
             gbdt_seeds: int, prefix_probe: bool, tuning: bool, plots: bool, log_mlflow: bool) -> None:
    """Score Q-Anchor embeddings on the downstream tasks against baselines (AUC/KS with 95% intervals)."""
    from pydantic import ValidationError

    from feature_repo.store import UserFeatureStore
    from qanchor.model import QAnchor
    from training.evaluation.harness import EvaluationSettings
    from training.evaluation.harness import evaluate as run
    from training.evaluation.population import PopulationError, load_population
    from training.evaluation.report import write_report
    from training.registry import load_model
    from training.tracking import TrackingError

    from training.tasks import TASKS_FILE, TaskError, load_tasks

    tasks_file = Path(tasks) if tasks.endswith((".yaml", ".yml")) else None
    names = None if tasks_file is not None or tasks == "all" else tasks.split(",")
    try:  # before any heavy work: a wrong task name is a usage error
        load_tasks(tasks_file or dataset / TASKS_FILE)[0].select(names)
    except TaskError as err:
        raise click.BadParameter(str(err), param_hint="--tasks") from None
    try:
        settings = EvaluationSettings(tasks=names, baselines=baselines, text_baseline=text_baseline,
                                      gbdt_seeds=gbdt_seeds, prompt_tuning=tuning,
                                      prefix_probe=prefix_probe, tune_steps=tune_steps, tokens=tokens,
                                      resamples=resamples, seed=seed)
    except ValidationError as err:
        raise click.BadParameter(err.errors()[0]["msg"], param_hint="--tasks") from None
    when = datetime.now(timezone.utc)
    folder = out or Path("reports") / when.strftime("%Y%m%dT%H%M%SZ")
    try:
        model = QAnchor.from_pretrained(backbone) if Path(backbone).is_dir() else load_model(backbone)
        population = load_population(UserFeatureStore(repo), dataset, max_users, seed=seed, tasks=tasks_file,
                                     task_names=names)
    except (TrackingError, PopulationError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    try:
        result = run(model, population, settings)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    meta = {"when": when.isoformat(timespec="seconds"), "backbone": backbone,
            "backbone_version": model.registry_version, "backbone_preset": model.settings.backbone.name,
            "dataset": str(dataset), "users": {p: int((population.part == p).sum()) for p in ("train", "val", "test")},
            "settings": settings.model_dump()}
    files = write_report(result, folder, meta, plots=plots)
    if log_mlflow:
        _log(folder, result.summary, meta)
    for s in result.summary:
        click.echo(f"{s['method']:<22} mean AUC {s['mean_auc']:.3f} [{s['mean_auc_low']:.3f}, {s['mean_auc_high']:.3f}]  "
                   f"mean KS {s['mean_ks']:.3f}")
    click.echo(f"wrote {len(files)} files to {folder}")


def _log(folder: Path, summary: list[dict], meta: dict) -> None:
    from training import tracking

    experiment_id = tracking.open_experiment(tracking.tracking_uri(), EXPERIMENT)
    with tracking.mlflow.start_run(experiment_id=experiment_id):
        tracking.mlflow.log_params({"backbone": meta["backbone"], "backbone_version": meta["backbone_version"],
                                    "dataset": meta["dataset"], **{f"users_{k}": v for k, v in meta["users"].items()},
                                    **{k: str(v)[:500] for k, v in meta["settings"].items()}})
        tracking.mlflow.log_metrics({f"{s['method']}.mean_{m}": s[f"mean_{m}"] for s in summary for m in ("auc", "ks")})
        tracking.mlflow.log_artifacts(str(folder), artifact_path="report")
