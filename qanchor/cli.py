"""The `qanchor` command line.

Sub-commands are discovered from the `qanchor.commands` entry-point group (see
pyproject.toml): the package that owns a boundary (Feast in `feature_repo`, Great
Expectations in `monitoring`, MLflow in `training`) contributes its own commands, so this
core package imports none of them. An entry point named "group.command" lands in `group`.

Listing commands must not import them: their modules pull in torch, MLflow and Feast
(seconds each). A group's help therefore reads each command's one-line help from its
module's source (the function docstring, or a `help=`/`short_help=` string given to the
decorator) and loads the command only when it is invoked or asked for its own help.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import click

from qanchor.user_files import UserFileError

GROUP_HELP = {
    "data": "Generate, import and validate UserU data.",
    "features": "Manage the Feast feature repository: apply, materialize, read.",
    "scenario": "Register, list, show and archive business scenarios.",
    "rollout": "A/B rollout on Kubernetes: apply, weights, status, promote, rollback.",
    "monitor": "Drift of features and embeddings against the serving backbone's training data.",
}


@lru_cache(maxsize=1)
def _command_entry_points() -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group="qanchor.commands"))


def _decorator_help(function: ast.FunctionDef) -> str | None:
    """`short_help=` (preferred) or `help=` given as a literal to the `command`/`group` decorator."""
    found: dict[str, str] = {}
    for decorator in function.decorator_list:
        if not isinstance(decorator, ast.Call):
            continue
        func = decorator.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("command", "group"):
            for keyword in decorator.keywords:
                if keyword.arg in ("help", "short_help") and isinstance(keyword.value, ast.Constant):
                    found[keyword.arg] = str(keyword.value.value)
    return found.get("short_help") or found.get("help")


@lru_cache(maxsize=None)
def source_help(target: str) -> str:
    """The help text of the command at `module:function`, read from source without importing it.

    Only the module's parent packages are imported (to locate the file); they are kept
    free of heavy imports for this reason.
    """
    module, _, attr = target.partition(":")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            text = _decorator_help(node) or ast.get_docstring(node) or ""
            return inspect.cleandoc(text).partition("\f")[0]
    return ""


class _PluginGroup(click.Group):
    """A click group whose commands come from entry points, loaded only when invoked."""

    def __init__(self, *args, prefix: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._prefix = prefix

    def _entries(self) -> dict[str, EntryPoint | None]:
        """Map of immediate child name -> its entry point (a command) or None (a sub-group)."""
        children: dict[str, EntryPoint | None] = {}
        for ep in _command_entry_points():
            if not ep.name.startswith(self._prefix):
                continue
            head, _, rest = ep.name[len(self._prefix):].partition(".")
            if rest:
                children[head] = None
            else:
                children.setdefault(head, ep)
        return children

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entries()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        builtin = super().get_command(ctx, name)
        if builtin is not None:
            return builtin
        entries = self._entries()
        if name not in entries:
            return None
        ep = entries[name]
        if ep is None:
            return _PluginGroup(name=name, help=GROUP_HELP.get(name), prefix=f"{self._prefix}{name}.")
        return ep.load()

    def invoke(self, ctx: click.Context):
        """Run the command; a file of the wrong kind (`UserFileError`) is a usage error, exit 2."""
        try:
            return super().invoke(ctx)
        except UserFileError as err:
            raise click.UsageError(str(err)) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Like click's, but with one-line helps read from source instead of loaded commands."""
        entries = self._entries()
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            ep = entries.get(name, False)
            if ep is False:
                text = super().get_command(ctx, name).get_short_help_str(limit)
            else:
                full = GROUP_HELP.get(name, "") if ep is None else source_help(ep.value)
                text = click.utils.make_default_short_help(full, limit)
            rows.append((name, text))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qanchor")
def cli() -> None:
    """Q-Anchor: query-aware user embeddings with LLMs."""


def main() -> None:
    sys.exit(cli.main(standalone_mode=True))
