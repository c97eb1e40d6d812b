"""The command-line reference as Markdown, generated from the click commands themselves:
every command and subcommand with its usage line, its docstring and every option (names,
type or choices, default, help). ``jobs/cli_reference.py`` writes it to ``docs/cli.md``;
a test fails when that file differs from :func:`markdown`.

The output is deterministic: a default that is a path inside the package is shown relative
to the repository (``seg1b_dask/policies/bundles/remediation``), never as an absolute path."""

from __future__ import annotations

import enum
import inspect
from pathlib import Path
from typing import Any

import click

PROG = "seg1b"
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding seg1b_dask/

HEADER = """\
# Command-line reference

Generated from the commands themselves by `python3 jobs/cli_reference.py`; do not edit by hand
(a test fails when this page and the commands differ). Every refusal prints one coded line:
see [Error codes](errors.md).
"""


def _group() -> click.Group:
    import seg1b_dask.cli  # noqa: F401  (registers every command on the group)
    from seg1b_dask.cli.app import main

    return main


def _default(value: Any) -> str:
    """A default as text, with paths inside the package shown relative to the repository."""
    if value is None or (isinstance(value, enum.Enum) and value.name == "UNSET"):  # click's "no default"
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(_default(v) for v in value)
    text = str(value)
    path = Path(text)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(_PACKAGE_PARENT).as_posix()
        except ValueError:
            return path.name
    return text


def _type(param: click.Parameter, ctx: click.Context) -> str:
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts:
        return "flag"
    if isinstance(kind, click.Choice):
        return "one of " + ", ".join(f"`{c}`" for c in kind.choices)
    name = kind.name
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        bounds = []
        if kind.min is not None:
            bounds.append(f"{'>' if kind.min_open else '≥'} {kind.min}")
        if kind.max is not None:
            bounds.append(f"{'<' if kind.max_open else '≤'} {kind.max}")
        return f"{name} ({', '.join(bounds)})" if bounds else name
    return name


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help(command: click.Command) -> str:
    text = inspect.cleandoc(command.help or "")
    return "\n".join(line.rstrip() for line in text.replace("\b\n", "").splitlines())


def _summary(command: click.Command) -> str:
    """The docstring's first paragraph on one line."""
    return " ".join(_help(command).split("\n\n")[0].split())


def _command(command: click.Command, ctx: click.Context, level: int) -> list[str]:
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    lines = [f"{'#' * level} `{ctx.command_path}`", "", "```", usage, "```", ""]
    help_text = _help(command)
    if help_text:
        lines += [help_text, ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if arguments:
        lines += ["| argument | type | required |", "|---|---|---|"]
        for arg in arguments:
            many = " (any number)" if arg.nargs == -1 else ""
            required = "yes" if arg.required else "no"
            lines.append(f"| `{arg.human_readable_name}` | {_type(arg, ctx)}{many} | {required} |")
        lines.append("")
    options = [p for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.hidden]
    if options:
        lines += ["| option | type | default | help |", "|---|---|---|---|"]
        for opt in options:
            names = ", ".join(f"`{n}`" for n in [*opt.opts, *opt.secondary_opts])
            if opt.required:
                default = "(required)"
            elif callable(opt.default):
                default = "computed"
            else:
                default = _default(opt.default) or "–"
            help_text = _cell(opt.help or "")
            lines.append(f"| {names} | {_type(opt, ctx)} | {_cell(default)} | {help_text} |")
        lines.append("")
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _command(sub, click.Context(sub, info_name=name, parent=ctx), level + 1)
    return lines


def markdown() -> str:
    """The whole reference: the group, then every command in name order, subcommands nested."""
    group = _group()
    ctx = click.Context(group, info_name=PROG)
    lines = [HEADER]
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            target = _anchor(f"{PROG} {name}")
            lines.append(f"- [`{PROG} {name}`](#{target}): {_summary(command)}")
    lines.append("")
    lines += _command(group, ctx, 2)
    return "\n".join(lines).rstrip("\n") + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading ``\\`seg1b run\\```: lower case, spaces to hyphens."""
    return "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")
