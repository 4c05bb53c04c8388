"""The `qanchor` command line.

Sub-commands are discovered from the `qanchor.commands` entry-point group (see
pyproject.toml): the package that owns a boundary (Feast in `feature_repo`, Great
Expectations in `monitoring`, MLflow in `training`) contributes its own commands, so this
core package imports none of them. An entry point named "group.command" lands in `group`.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

GROUP_HELP = {
    "data": "Generate, import and validate UserU data.",
    "features": "Manage the Feast feature repository: apply, materialize, read.",
    "scenario": "Register, list, show and archive business scenarios.",
}


class _PluginGroup(click.Group):
    """A click group whose commands come from entry points, loaded only when listed or invoked."""

    def __init__(self, *args, prefix: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._prefix = prefix

    def _entries(self) -> dict[str, str]:
        """Map of immediate child name -> entry-point name (leaf) or '' (sub-group)."""
        children: dict[str, str] = {}
        for ep in entry_points(group="qanchor.commands"):
            if not ep.name.startswith(self._prefix):
                continue
            head, _, rest = ep.name[len(self._prefix):].partition(".")
            children.setdefault(head, "" if rest else ep.name)
            if rest:
                children[head] = ""
        return children

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entries()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        builtin = super().get_command(ctx, name)
        if builtin is not None:
            return builtin
        target = self._entries().get(name)
        if target is None:
            return None
        if target == "":
            return _PluginGroup(name=name, help=GROUP_HELP.get(name), prefix=f"{self._prefix}{name}.")
        (ep,) = [e for e in entry_points(group="qanchor.commands") if e.name == target]
        return ep.load()


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qanchor")
def cli() -> None:
    """Q-Anchor: query-aware user embeddings with LLMs."""


def main() -> None:
    sys.exit(cli.main(standalone_mode=True))
