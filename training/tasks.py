"""Evaluation tasks as data: a `tasks.yaml` names each task's query and its label table.

```yaml
generic_query: What will this user do in the next 30 days?   # the "static embedding" baseline query
tasks:
  - name: churn_next_month
    group: Engagement
    query: will this user stop buying next month?
    paraphrase: is this customer about to lapse within a month?   # optional, never trained on
    labels: labels/churn.parquet      # relative to this file: user_id, label, label_time
    column: label                     # optional; a wide table holds one column per task
```

`qanchor data generate` writes one for its tasks (over its wide `labels/` table), and `qanchor
data labels --rule` writes label tables from a user's own logs, so evaluation needs no code of
the generator. A population is evaluated at one label time per user: every task's table must
give a user the same `label_time`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qanchor.user_files import read_parquet_frame, read_yaml_model

TASKS_FILE = "tasks.yaml"


class TaskError(ValueError):
    """A tasks file or one of its label tables is unusable."""


class TaskDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    group: str = ""
    query: str = Field(min_length=1, max_length=512)
    paraphrase: str | None = Field(default=None, min_length=1, max_length=512)
    labels: str
    column: str = "label"


class TaskSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generic_query: str = Field(default="What will this user do in the next 30 days?", min_length=1)
    tasks: list[TaskDefinition] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> TaskSet:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def get(self, name: str) -> TaskDefinition:
        return next(t for t in self.tasks if t.name == name)

    def select(self, names: list[str] | None) -> TaskSet:
        """The tasks named (all when None), in the order given; unknown names are an error."""
        if names is None:
            return self
        unknown = sorted(set(names) - set(self.names))
        if unknown or not names:
            raise TaskError(f"unknown tasks {unknown}; choose from {self.names}")
        return self.model_copy(update={"tasks": [self.get(n) for n in names]})


def load_tasks(path: Path) -> tuple[TaskSet, Path]:
    """The task set of `path` and the folder its label paths are relative to."""
    path = Path(path)
    return read_yaml_model(path, "tasks file", TaskSet, TaskError), path.parent


def write_tasks(tasks: TaskSet, path: Path) -> None:
    path.write_text(yaml.safe_dump(tasks.model_dump(exclude_none=True), sort_keys=False, allow_unicode=True))


def label_table(tasks: TaskSet, base: Path) -> pd.DataFrame:
    """One row per user: `user_id`, `label_time` and one 0/1 column per task (users in every table)."""
    merged: pd.DataFrame | None = None
    for task in tasks.tasks:
        frame = read_parquet_frame(base / task.labels, f"labels of task {task.name}")
        missing = {"user_id", "label_time", task.column} - set(frame.columns)
        if missing:
            raise TaskError(f"labels of task {task.name} ({base / task.labels}) lack columns {sorted(missing)}")
        frame = frame[["user_id", "label_time", task.column]].rename(columns={task.column: task.name})
        if frame[task.name].isna().any() or not frame[task.name].isin([0, 1]).all():
            raise TaskError(f"labels of task {task.name} must be 0/1 without nulls")
        if frame["user_id"].duplicated().any():
            raise TaskError(f"labels of task {task.name} list a user more than once")
        if merged is None:
            merged = frame
            continue
        joined = merged.merge(frame, on="user_id", suffixes=("", "_other"))
        clash = joined["label_time"] != joined["label_time_other"]
        if clash.any():
            raise TaskError(f"task {task.name} labels user {joined.loc[clash, 'user_id'].iloc[0]!r} at another "
                            "label_time than the tasks before it; one population is evaluated at one time per user")
        merged = joined.drop(columns="label_time_other")
    merged[tasks.names] = merged[tasks.names].astype(int)
    return merged.sort_values("user_id", ignore_index=True)
