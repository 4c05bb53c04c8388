"""`qanchor rollout apply | set-weight | status | promote | rollback`: the A/B split on Kubernetes."""

from __future__ import annotations

from pathlib import Path

import click

from feature_repo.params import FEATURE_REPO
from monitoring.gate import DriftGateError, gate_tags, require_passing_check
from serving.rollout import KubeApi, Registry, Rollout, RolloutError

_COMMON = [
    click.option("--namespace", "-n", default="qanchor", show_default=True, help="Namespace of the ab overlay."),
    click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), default=None,
                 help="Kubeconfig file; default: in-cluster config, else ~/.kube/config."),
    click.option("--context", default=None, help="Kubeconfig context."),
    click.option("--dry-run", is_flag=True, help="Print what would change; change nothing."),
]


def _common(command):
    for option in reversed(_COMMON):
        command = option(command)
    return command


def _rollout(namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> Rollout:
    return Rollout(KubeApi.from_kubeconfig(kubeconfig, context), Registry(), namespace, dry_run, click.echo)


def _run(step):
    try:
        return step()
    except (RolloutError, DriftGateError) as err:
        raise click.ClickException(str(err)) from None


@click.command("apply", short_help="Server-side apply a rendered overlay (default: ab).")
@click.option("--overlay", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=Path("k8s/overlays/ab"), show_default=True, help="Kustomize overlay to render and apply.")
@_common
def apply(overlay: Path, namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> None:
    """Render OVERLAY with `kubectl kustomize` and server-side apply every object (--dry-run: diffs)."""
    _run(lambda: _rollout(namespace, kubeconfig, context, dry_run).apply(overlay))


@click.command("set-weight", short_help="Send a share of traffic to the challenger.")
@click.option("--challenger", type=click.IntRange(0, 100), required=True, help="Percent of traffic for the challenger.")
@_common
def set_weight(challenger: int, namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> None:
    """Set the HTTPRoute split to 100-P / P; refuses to route to a variant that is not registered and ready."""
    _run(lambda: _rollout(namespace, kubeconfig, context, dry_run).set_weight(challenger))


@click.command("status", short_help="Weights, readiness and MLflow versions of both variants.")
@_common
def status(namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> None:
    """Ready replicas, observed generation, traffic weights and the version behind each alias."""
    for line in _run(lambda: _rollout(namespace, kubeconfig, context, dry_run).status().lines()):
        click.echo(line)


@click.command("promote", short_help="Make the challenger's version the champion, safely.")
@click.option("--repo", type=FEATURE_REPO, required=True, help="Feature repository whose newest drift check gates this.")
@click.option("--force", is_flag=True, help="Promote even though the newest drift check failed (tagged on the version).")
@_common
def promote(repo: Path, force: bool, namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> None:
    """All traffic to the challenger, alias champion -> its version, restart and wait for the champion,
    all traffic back to it. Refuses on a failed drift check unless --force; undone if a step fails."""
    def step():
        outcome = require_passing_check(repo, force, "promotion")
        return _rollout(namespace, kubeconfig, context, dry_run).promote(gate_tags(outcome, force))

    _run(step)


@click.command("rollback", short_help="Back to the champion before the last promotion.")
@_common
def rollback(namespace: str, kubeconfig: Path | None, context: str | None, dry_run: bool) -> None:
    """Alias champion -> the version it had before the last promotion, restart it, all traffic to it."""
    _run(lambda: _rollout(namespace, kubeconfig, context, dry_run).rollback())
