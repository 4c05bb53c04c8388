"""`qanchor pretrain`, `promote`, `scenario register | list | show | archive`, `data corpus` and `data labels`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from feature_repo.layout import FeatureRepoError
from feature_repo.params import FEATURE_REPO
from monitoring.gate import DriftGateError, gate_tags, require_passing_check
from qanchor.model.backbone import BackboneError
from training.pretrain import ConfigError, load_config, pretrain as run_pretrain
from training.registry import BACKBONE_MODEL, ScenarioError
from training.tracking import TrackingError


@click.command("pretrain")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Pretraining config YAML (see training/configs/pretrain_tiny.yaml).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the config's output_dir.")
@click.option("--force", is_flag=True,
              help="Train even though the feature repository's newest drift check failed (logged to MLflow).")
def pretrain(config_path: Path, resume: bool, force: bool) -> None:
    """Pretrain the Q-Anchor backbone (contrastive + NTP), log to MLflow and register it as challenger.

    Runs as one process, or under `torchrun --nproc-per-node N` as DDP. Refuses while the
    feature repository's newest `qanchor monitor check` failed, unless --force.
    """
    try:
        summary = run_pretrain(load_config(config_path), resume=resume, force=force)
    except (ConfigError, BackboneError, TrackingError, FeatureRepoError, FileNotFoundError, DriftGateError) as err:
        raise click.ClickException(str(err)) from None
    if summary:
        click.echo(f"held-out retrieval accuracy {summary['val_retrieval_acc']:.3f} (chance {summary['chance']:.3f}); "
                   f"run {summary['run_id']}" + (f"; registered version {summary['version']}" if "version" in summary else ""))


@click.command("promote")
@click.option("--version", required=True, help="Registered model version to promote.")
@click.option("--alias", default="champion", show_default=True, help="Alias to move onto the version.")
@click.option("--name", default=BACKBONE_MODEL, show_default=True, help="Registered model name.")
@click.option("--repo", type=FEATURE_REPO, default=None,
              help="Feature repository whose newest drift check gates the promotion; default: the one the "
                   "version's pretraining run names.")
@click.option("--force", is_flag=True, help="Promote even though the newest drift check failed (tagged on the version).")
def promote(version: str, alias: str, name: str, repo: Path | None, force: bool) -> None:
    """Move an alias (default `champion`) of a registered backbone onto VERSION.

    Refuses while the feature repository's newest `qanchor monitor check` failed, unless --force.
    """
    from training.registry import promote as set_alias, training_repo

    try:
        repo = repo or training_repo(version, name)
        outcome = require_passing_check(repo, force, f"promoting {name} v{version}") if repo is not None else None
        set_alias(version, name=name, alias=alias, tags=gate_tags(outcome, force))
    except (TrackingError, DriftGateError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{name}@{alias} -> version {version}" + (f" ({outcome.describe()})" if outcome else ""))


@click.command("register")
@click.option("--name", required=True, help="Scenario name (lowercase, digits, underscores).")
@click.option("--query", required=True, help="The natural-language scenario query.")
@click.option("--labels", "labels_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Parquet of user_id, label[, label_time]; omit for a query-only (zero-shot) scenario.")
@click.option("--repo", type=FEATURE_REPO, required=True,
              help="Feast repository the labelled users' features come from.")
@click.option("--backbone", default="champion", show_default=True, help="Backbone alias or version to tune on.")
@click.option("--tokens", type=click.IntRange(0, 64), default=6, show_default=True, help="Soft-prompt vectors.")
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True, help="Tuning steps (early stopping may end sooner).")
@click.option("--require-gain", is_flag=True,
              help="Register nothing unless the tuned prompt beats the query-only state on validation AUC.")
def scenario_register(name: str, query: str, labels_path: Path | None, repo: Path, backbone: str, tokens: int,
                      steps: int, require_gain: bool) -> None:
    """Register a scenario: tuned soft prompt + prototypes with labels, query-only without.

    Tuning keeps the best validation state, its query-only starting point included: a prompt
    that does not beat query-only is not shipped (the query-only state is, or nothing with
    --require-gain).
    """
    from feature_repo.store import UserFeatureStore
    from qanchor.user_files import read_parquet_frame
    from training.scenario_labels import ScenarioLabelError
    from training.scenario_registry import register_scenario
    from training.scenario_tuning import TuningSettings

    try:
        labels = read_parquet_frame(labels_path, "labels") if labels_path else None
        result = register_scenario(name, query, UserFeatureStore(repo), labels, backbone,
                                   TuningSettings(tokens=tokens, steps=steps), require_gain=require_gain)
    except (ScenarioError, ScenarioLabelError, TrackingError) as err:
        raise click.ClickException(str(err)) from None
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    head = f"registered scenario {name} v{result.version} on backbone v{result.backbone_version}"
    if result.state == "zero_shot":
        click.echo(f"{head}: query-only (zero-shot, no labels)")
        return
    m = result.metrics
    if result.state == "tuned":
        click.echo(f"{head}: tuned prompt, val AUC {m['val_auc']:.3f} (query-only {m['query_only_val_auc']:.3f}, "
                   f"+{result.metrics['tuned_val_auc'] - m['query_only_val_auc']:.3f})")
    else:
        click.echo(f"{head}: query-only prototypes, val AUC {m['val_auc']:.3f}; the tuned prompt did not beat it "
                   f"(best tuned {m['tuned_val_auc']:.3f}), so it was not shipped")


@click.command("list")
@click.option("--all", "include_archived", is_flag=True, help="Include archived versions.")
def scenario_list(include_archived: bool) -> None:
    """List registered scenarios."""
    from training.registry import list_scenarios

    for row in list_scenarios(include_archived):
        flags = row.state.replace("_", "-") + (", archived" if row.archived else "")
        click.echo(f"{row.name:<24} v{row.version:<4} backbone v{row.backbone_version:<4} {flags:<18} {row.query}")


@click.command("show")
@click.option("--name", required=True)
@click.option("--version", default=None, help="Default: the newest unarchived version.")
def scenario_show(name: str, version: str | None) -> None:
    """Print a scenario version's definition and metrics as JSON."""
    import json

    from training.registry import show_scenario

    try:
        click.echo(json.dumps(show_scenario(name, version), indent=2))
    except (ScenarioError, TrackingError) as err:
        raise click.ClickException(str(err)) from None


@click.command("archive")
@click.option("--name", required=True)
@click.option("--version", required=True)
def scenario_archive(name: str, version: str) -> None:
    """Archive a scenario version (kept for audit, no longer listed or served)."""
    from training.registry import archive_scenario

    try:
        archive_scenario(name, version)
    except (ScenarioError, TrackingError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"archived {name} v{version}")


@click.command("corpus")
@click.option("--repo", type=FEATURE_REPO, required=True, help="Feast repository holding the imported logs.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for d_future/, d_uqa/ and splits/ (the `data.dataset` of a pretraining config).")
@click.option("--horizon-days", type=click.IntRange(min=1), default=30, show_default=True,
              help="Days D_future looks ahead: two import snapshots this far apart must exist.")
@click.option("--questions-per-snapshot", type=click.IntRange(min=0), default=3, show_default=True,
              help="Grounded D_uqa questions per user and snapshot.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT if it already holds data.")
def corpus(repo: Path, out: Path, horizon_days: int, questions_per_snapshot: int, seed: int, overwrite: bool) -> None:
    """Derive the pretraining corpus (D_future, D_uqa, splits) from the imported logs of any spec.

    Everything comes from the store's snapshots, so no event at or after the import's
    as-of time enters; see docs/data.md for the three tables' schema.
    """
    from feature_repo.store import UserFeatureStore
    from training.corpus import CorpusError, CorpusSettings, build_corpus, write_corpus

    store = UserFeatureStore(repo)
    settings = CorpusSettings(horizon_days=horizon_days, questions_per_snapshot=questions_per_snapshot, seed=seed)
    try:
        built = build_corpus(store, settings)
        rows = write_corpus(built, out, {"repo": str(repo.resolve()), "feature_version": store.feature_version,
                                         "as_of": store.settings.as_of, "settings": settings.model_dump()},
                            overwrite=overwrite)
    except (CorpusError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {rows['d_future']} D_future, {rows['d_uqa']} D_uqa rows and splits of {rows['splits']} users "
               f"to {out}")


@click.command("labels")
@click.argument("dataset", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", default=None, help="Export this task of DATASET/tasks.yaml.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="train", show_default=True,
              help="With --task: users of this split of DATASET/splits only (evaluation users stay out of tuning).")
@click.option("--rule", "rule_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Label by a rule YAML instead: modality, text_pattern and/or numeric condition, window_days.")
@click.option("--events", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --rule: the raw event parquet (it may run past the import's as-of).")
@click.option("--repo", type=FEATURE_REPO, default=None, help="With --rule: the Feast repository whose users are labelled.")
@click.option("--label-time", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="With --rule: start of the label window (UTC); default: the store's oldest snapshot.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Parquet file to write.")
def labels(dataset: Path | None, task: str | None, split: str, rule_path: Path | None, events: Path | None,
           repo: Path | None, label_time: datetime | None, out: Path) -> None:
    """Write a scenario/task labels table (user_id, label, label_time): a task of a dataset, or a rule over your logs.

    --rule labels each user of --repo 1 when it has matching events in the window after
    --label-time; features are read as of --label-time, so the label's events are never inputs.
    """
    import pandas as pd

    from qanchor.user_files import read_parquet_frame
    from training.tasks import TASKS_FILE, TaskError, label_table, load_tasks

    if (rule_path is None) == (task is None):
        raise click.UsageError("give either DATASET --task NAME or --rule RULE --events EVENTS --repo STORE")
    if task is not None:
        if dataset is None:
            raise click.UsageError("--task needs the DATASET folder holding tasks.yaml")
        task_set, base = load_tasks(dataset / TASKS_FILE)
        try:
            table = label_table(task_set.select([task]), base)
        except TaskError as err:
            raise click.BadParameter(str(err), param_hint="--task") from None
        if split != "all":
            users = read_parquet_frame(dataset / "splits", "splits").query("split == @split")["user_id"]
            table = table[table["user_id"].isin(users)]
        frame, what = table.rename(columns={task: "label"})[["user_id", "label", "label_time"]], task
    else:
        from feature_repo.store import UserFeatureStore
        from training.label_rules import LabelRuleError, apply_rule, load_rule

        if events is None or repo is None:
            raise click.UsageError("--rule needs --events and --repo")
        store = UserFeatureStore(repo)
        try:
            rule = load_rule(rule_path)
            rule.check_against(store.spec)
            start = (pd.Timestamp(label_time, tz="UTC") if label_time else store.label_window()[0])
            frame = apply_rule(rule, read_parquet_frame(events, "events"), sorted(store.known_users()), start)
        except LabelRuleError as err:
            raise click.ClickException(str(err)) from None
        what = f"rule {rule_path.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    click.echo(f"wrote {len(frame)} labels of {what} ({frame['label'].mean():.1%} positive) to {out}")
