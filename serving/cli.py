"""`qanchor serve`: start the BentoML embedding service with its settings on the command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command("serve")
@click.option("--alias", default="champion", show_default=True,
              help="qanchor-backbone alias or version to serve (QANCHOR_MODEL_ALIAS).")
@click.option("--repo", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
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
