"""`qanchor pretrain` and `qanchor promote`."""

from __future__ import annotations

from pathlib import Path

import click

from qanchor.model.backbone import BackboneError
from training.pretrain import ConfigError, load_config, pretrain as run_pretrain
from training.tracking import BACKBONE_MODEL, TrackingError, promote as set_alias, tracking_uri


@click.command("pretrain")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Pretraining config YAML (see training/configs/pretrain_tiny.yaml).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the config's output_dir.")
def pretrain(config_path: Path, resume: bool) -> None:
    """Pretrain the Q-Anchor backbone (contrastive + NTP), log to MLflow and register it as challenger.

    Runs as one process, or under `torchrun --nproc-per-node N` as DDP.
    """
    try:
        summary = run_pretrain(load_config(config_path), resume=resume)
    except (ConfigError, BackboneError, TrackingError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    if summary:
        click.echo(f"held-out retrieval accuracy {summary['val_retrieval_acc']:.3f} (chance {summary['chance']:.3f}); "
                   f"run {summary['run_id']}" + (f"; registered version {summary['version']}" if "version" in summary else ""))


@click.command("promote")
@click.option("--version", required=True, help="Registered model version to promote.")
@click.option("--alias", default="champion", show_default=True, help="Alias to move onto the version.")
@click.option("--name", default=BACKBONE_MODEL, show_default=True, help="Registered model name.")
def promote(version: str, alias: str, name: str) -> None:
    """Move an alias (default `champion`) of a registered backbone onto VERSION."""
    from training.tracking import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    try:
        set_alias(version, name=name, alias=alias)
    except TrackingError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{name}@{alias} -> version {version}")
