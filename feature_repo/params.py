"""Click parameter types for the folders the Feast boundary owns, checked before any heavy import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from feature_repo.layout import FeatureRepoError, repo_settings, require_imported_features


class CheckedFolder(click.Path):
    """An existing folder that `check` accepts; a FeatureRepoError becomes a usage error (exit 2)."""

    def __init__(self, name: str, check: Callable[[Path], object]) -> None:
        super().__init__(exists=True, file_okay=False, path_type=Path)
        self.name = name
        self._check = check

    def convert(self, value, param, ctx) -> Path:
        path = super().convert(value, param, ctx)
        try:
            self._check(path)
        except FeatureRepoError as err:
            self.fail(str(err), param, ctx)
        return path


#: A Q-Anchor feature repository (written by `qanchor features apply`).
FEATURE_REPO = CheckedFolder("repo", repo_settings)
#: A feature directory written by `qanchor data import --out`.
IMPORTED_FEATURES = CheckedFolder("data", require_imported_features)
