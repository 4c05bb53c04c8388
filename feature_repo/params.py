"""Click parameter types for the folders the Feast boundary owns."""

from __future__ import annotations

from pathlib import Path

import click

from feature_repo.layout import FeatureRepoError, repo_settings, require_imported_features


class FeatureRepoPath(click.Path):
    """An existing Q-Anchor feature repository (written by `qanchor features apply`)."""

    name = "repo"

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False, path_type=Path)

    def convert(self, value, param, ctx) -> Path:
        path = super().convert(value, param, ctx)
        try:
            repo_settings(path)
        except FeatureRepoError as err:
            self.fail(str(err), param, ctx)
        return path


class ImportedFeaturesPath(click.Path):
    """An existing feature directory written by `qanchor data import --out`."""

    name = "data"

    def __init__(self) -> None:
        super().__init__(exists=True, file_okay=False, path_type=Path)

    def convert(self, value, param, ctx) -> Path:
        path = super().convert(value, param, ctx)
        try:
            return require_imported_features(path)
        except FeatureRepoError as err:
            self.fail(str(err), param, ctx)


FEATURE_REPO = FeatureRepoPath()
IMPORTED_FEATURES = ImportedFeaturesPath()
