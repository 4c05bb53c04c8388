"""`qanchor serve`: start the BentoML embedding service with its settings on the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from feature_repo.params import FEATURE_REPO


@click.command("serve")
@click.option("--alias", default="champion", show_default=True,
              help="qanchor-backbone alias or version to serve (QANCHOR_MODEL_ALIAS).")
@click.option("--repo", type=FEATURE_REPO, required=True,
              help="Feast repository the service reads online features from (QANCHOR_FEATURE_REPO).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--cache-mb", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Prefix KV cache budget on the device, in MiB.")
@click.option("--variant", default="default", show_default=True, help="A/B variant echoed in X-QAnchor-Variant.")
def serve(alias: str, repo: Path, host: str, port: int, device: str | None, cache_mb: int, variant: str) -> None:
    """Serve embeddings and scores over HTTP (POST /embed, /score; GET /scenarios; /readyz, /metrics).

    The admin token for POST /scenarios/reload is read from QANCHOR_ADMIN_TOKEN, never from a flag,
    so it does not show in the process list. MLFLOW_TRACKING_URI selects the registry.
    """
    env = {**os.environ, "QANCHOR_MODEL_ALIAS": alias, "QANCHOR_FEATURE_REPO": str(repo.resolve()),
           "QANCHOR_CACHE_BYTES": str(cache_mb << 20), "QANCHOR_VARIANT": variant}
    if device:
        env["QANCHOR_DEVICE"] = device
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:QAnchorService", "--host", host,
               "--port", str(port)]
    click.echo(f"serving qanchor-backbone@{alias} from {repo} on http://{host}:{port}", err=True)
    os.execvpe(command[0], command, env)


@click.command("score-batch")
@click.option("--repo", type=FEATURE_REPO, required=True,
              help="Feast repository: users and online features come from it, vectors are pushed into it.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the parquet parts (shared by all shards of a run; resumable).")
@click.option("--alias", default="champion", show_default=True, help="qanchor-backbone alias or version to score with.")
@click.option("--scenarios", default=None,
              help="Comma-separated registered scenarios (default: every scenario registered for the backbone).")
@click.option("--shard", default="0/1", show_default=True,
              help="INDEX/COUNT: score only this shard of the users (a k8s Indexed Job passes its completion index).")
@click.option("--reference-time", type=click.IntRange(min=0), default=None,
              help="Unix seconds recency is measured from (default: the store's as-of time, as the service does).")
@click.option("--part-users", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Users per parquet part (the unit of resumption).")
@click.option("--batch-users", type=click.IntRange(min=1), default=64, show_default=True,
              help="Users per forward pass.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--push/--no-push", default=True, show_default=True,
              help="Push the vectors into the `user_embedding` view of the online store.")
def score_batch(repo: Path, out: Path, alias: str, scenarios: str | None, shard: str, reference_time: int | None,
                part_users: int, batch_users: int, device: str | None, push: bool) -> None:
    """Embed every user of the store under registered scenarios: parquet parts + Feast `user_embedding`.

    Run the same command with --shard 0/N ... N-1/N on N workers; rerun a shard to resume it.
    """
    import torch
    from tqdm import tqdm

    from feature_repo.store import UserFeatureStore
    from qanchor.modality_spec import FeatureSchemaError
    from serving.batch_scoring import BatchScoringError, Shard, open_run, plan_run, score_shard
    from serving.runtime import load_scenarios
    from training import registry
    from training.tracking import TrackingError

    try:
        part = Shard.parse(shard)
        store = UserFeatureStore(repo)
        model = registry.load_model(alias, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.check_features(store.spec)
        available = load_scenarios(model.registry_version)
        names = [s.strip() for s in scenarios.split(",") if s.strip()] if scenarios else sorted(available)
        unknown = [n for n in names if n not in available]
        if unknown or not names:
            raise BatchScoringError(f"scenarios {unknown or names} are not registered for qanchor-backbone "
                                    f"v{model.registry_version}; registered: {sorted(available)}")
        chosen = {n: available[n] for n in names}
        ref = reference_time if reference_time is not None else store.reference_time
        run = plan_run(model, chosen, ref, store.feature_version, part, part_users)
        open_run(out, run)
        if push:
            store.register_embeddings(out, names, model.registry_version)
        with tqdm(unit="user", desc=f"shard {part.index}/{part.count}") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done)

            report = score_shard(model, chosen, store, out, part, run, batch_users=batch_users, push=push,
                                 progress=progress)
    except (BatchScoringError, FeatureSchemaError, TrackingError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped_users.items())) or "none"
    click.echo(f"shard {part.index}/{part.count}: {report.scored} of {report.users} users scored under "
               f"{', '.join(names)} on backbone v{model.registry_version} ({report.parts_written} parts written, "
               f"{report.parts_skipped} already done; skipped: {skipped}) in {report.seconds:.1f} s -> {out}")
