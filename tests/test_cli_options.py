"""Every command's bad options, walked from the click commands themselves: an unknown option,
a number out of range, a value outside a choice, a missing argument — each one coded
``E_BAD_OPTION`` line naming what is wrong, exit 2, no usage block, no traceback."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from seg1b_dask.cli import main


def _leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _leaves(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_leaves(main))


def _bad_values(command: click.Command) -> Iterator[tuple[list[str], str]]:
    """(arguments, what the refusal must name) for each option a value can be wrong for."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.is_flag or not param.opts[0].startswith("--"):
            continue
        option = param.opts[0]
        if isinstance(param.type, click.IntRange | click.FloatRange) and param.type.min is not None:
            yield [option, str(param.type.min - 1)], option
        elif isinstance(param.type, click.Choice):
            yield [option, "not-a-choice"], option


def _refusal(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (args, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: E_BAD_OPTION: "), (args, result.output)
    assert "Traceback" not in result.output and "Usage:" not in result.output
    return lines[0]


def test_the_walk_covers_every_command() -> None:
    assert {" ".join(path) for path in COMMANDS} >= {"run", "certify", "calibrate", "score", "lock", "upstream synth"}
    assert sum(1 for command in COMMANDS.values() for _ in _bad_values(command)) >= 10


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) for p in COMMANDS])
def test_every_bad_option_is_one_coded_line(path: tuple[str, ...]) -> None:
    command = COMMANDS[path]
    if not command.context_settings.get("ignore_unknown_options"):  # scheduler/worker hand theirs to dask
        assert "[at: --no-such-option]" in _refusal([*path, "--no-such-option"])
    for args, named in _bad_values(command):
        line = _refusal([*path, *args])
        assert f"[at: {named}]" in line and "see --help" in line, line
    required = [p for p in command.params if p.required]
    if required:
        line = _refusal(list(path))
        assert any(p.human_readable_name in line or (p.opts and p.opts[0] in line) for p in required), line
