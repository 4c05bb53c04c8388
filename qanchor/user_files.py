"""Reading the files users hand to commands (YAML specs and configs, parquet tables).

These are the first files a new user writes, so every way one can be wrong (absent, empty,
not text, not YAML or parquet, the wrong shape) gets a one-line `UserFileError` naming the
file and the problem. The `qanchor` command line turns it into a usage error (exit 2) for every
command, so no command needs its own handler for "that is not the file I asked for".
"""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    import pandas as pd

Model = TypeVar("Model", bound=BaseModel)


class UserFileError(ValueError):
    """A file or folder a user named is missing, empty or not of the expected format."""


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The top-level mapping of the YAML file at `path`; `what` names the file in messages."""
    path = Path(path)
    if not path.is_file():
        raise UserFileError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserFileError(f"{what} {path} is not a UTF-8 text file (byte {err.start}); expected YAML") from None
    if not text.strip():
        raise UserFileError(f"{what} {path} is empty; expected a YAML mapping")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserFileError(f"{what} {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserFileError(f"{what} {path} must be a YAML mapping of settings, not a {type(data).__name__}")
    return data


def read_yaml_model(path: Path, what: str, model: type[Model], error: type[Exception]) -> Model:
    """The YAML file at `path` validated as `model`; content errors become `error`, one line per field."""
    data = read_yaml_mapping(path, what)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise error(f"invalid {what} {path}:\n" + "\n".join(lines)) from None


def require_parquet_files(path: Path, what: str) -> None:
    """A missing path, or a folder without a single .parquet file, is a UserFileError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserFileError(f"{what} {path} does not exist")
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*.parquet")):
        raise UserFileError(f"{what} directory {path} holds no .parquet files")


def read_parquet_frame(path: Path, what: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The parquet file or directory of parquet files at `path` as one frame."""
    import pandas as pd  # here, not at the top: loading a YAML spec should not pull in pandas
    import pyarrow as pa

    path = Path(path)
    require_parquet_files(path, what)
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserFileError(f"{what} {path} is not a readable parquet table: {reason}") from None
