"""Where a Q-Anchor feature repository keeps its files, checked without importing Feast.

Commands check a `--repo` argument up front (`feature_repo.params.FEATURE_REPO`), so a
wrong folder is a one-line usage error before any heavy import, not a traceback later.
"""

from __future__ import annotations

import json
from pathlib import Path

#: Settings file every Q-Anchor Feast repository carries next to feature_store.yaml.
SETTINGS_FILE = "qanchor.json"
#: Written by `qanchor data import` into the feature data directory.
DATA_MANIFEST = "manifest.json"
#: Folder (and Feast view name) of the profile source inside the imported-feature directory.
PROFILE_VIEW = "profile"


class FeatureRepoError(ValueError):
    """A folder is not a usable Q-Anchor feature repository or imported-feature directory."""


def require_imported_features(data: Path) -> Path:
    """`data` if it is a `qanchor data import` output, else a FeatureRepoError saying what to run."""
    if not (Path(data) / DATA_MANIFEST).is_file():
        raise FeatureRepoError(f"{data} holds no imported features ({DATA_MANIFEST} missing); "
                               "run `qanchor data import --out` to create it")
    return Path(data)


def repo_settings(repo: Path) -> tuple[dict, Path]:
    """The parsed settings file and the (resolved) imported-feature directory it points at."""
    path = Path(repo) / SETTINGS_FILE
    if not path.is_file():
        raise FeatureRepoError(f"{repo} is not a Q-Anchor feature repository ({SETTINGS_FILE} missing); "
                               f"create one with `qanchor features apply --data DIR --repo {repo}`")
    try:
        settings = json.loads(path.read_text())
        data = Path(settings["data"])
    except (ValueError, KeyError, TypeError) as err:
        raise FeatureRepoError(f"{path} is not a valid settings file ({err}); "
                               f"rewrite it with `qanchor features apply --data DIR --repo {repo}`") from None
    data = data if data.is_absolute() else (Path(repo) / data).resolve()
    return settings, require_imported_features(data)
