"""``seg1b``: the group, its shared options, and one coded line for every refusal (never a
traceback for anything a user can cause)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from seg1b_dask import __version__
from seg1b_dask.chain.runner import DEFAULT_POLICIES, DEFAULT_ROOT
from seg1b_dask.engine.execution import Execution, check_scheduler
from seg1b_dask.engine.interrupts import (
    abandoned_threads,
    exit_code_of,
    sigterm_interrupts,
    silence_abandoned_reads,
)
from seg1b_dask.errors import Code, InternalError, Seg1BError
from seg1b_dask.io.runroot import RunRoot, environment_error

U64_MAX = 2**64 - 1


class _Group(click.Group):
    """Every refusal is one coded line: input and environment exit 2, a bug exits 3."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's own parse errors (a value out of range, an unknown option or command, a
        missing argument) become one ``E_BAD_OPTION`` line naming the option and what it
        accepts, like every other refusal."""
        kwargs["standalone_mode"] = False
        try:
            with sigterm_interrupts():
                code = super().main(*args, **kwargs)
        except click.exceptions.Abort as exc:
            click.echo("interrupted", err=True)
            cause = exc.__cause__
            sys.exit(exit_code_of(cause) if isinstance(cause, KeyboardInterrupt) else 130)
        except click.exceptions.NoArgsIsHelpError as exc:  # `seg1b` alone: the help, as asked
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            bad = Seg1BError(Code.E_BAD_OPTION, f"{message} (see --help)", key=_option_of(exc))
            click.echo(f"error: {bad}", err=True)
            sys.exit(bad.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Seg1BError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"error: {environment_error(exc)}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as exc:
            code = exit_code_of(exc)
            click.echo(
                f"interrupted ({'Ctrl-C' if code == 130 else signal.Signals(code - 128).name}): stopped, nothing "
                "was published half-written; run again to resume from the cache",
                err=True,
            )
            silence_abandoned_reads()
            if abandoned_threads():  # they may still print or write: end the process now
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            sys.exit(code)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("SEG1B_DEBUG"):
                raise
            if type(exc).__module__.startswith("distributed"):  # KilledWorker: the cluster, not a bug
                lost = Seg1BError(
                    Code.E_SCHEDULER_UNREACHABLE, f"the Dask cluster failed ({type(exc).__name__}: {exc})"
                )
                click.echo(f"error: {lost}", err=True)
                sys.exit(lost.exit_code)
            bug = InternalError(Code.E_INTERNAL, f"{type(exc).__name__}: {exc}; SEG1B_DEBUG=1 shows the traceback")
            click.echo(f"error: {bug}", err=True)
            sys.exit(bug.exit_code)


def _option_of(exc: click.ClickException) -> str | None:
    """The option, argument or command a click error is about."""
    if isinstance(exc, click.NoSuchOption):
        return exc.option_name
    param = getattr(exc, "param", None)
    if param is not None:
        return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    if isinstance(exc, click.UsageError) and exc.ctx is not None and exc.ctx.command is not None:
        return exc.ctx.command_path
    return None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="seg1b")
def main() -> None:
    """seg1b_dask — Segment 1B: where on Earth every outlet sits."""


root_option = click.option(
    "--root",
    default=str(DEFAULT_ROOT),
    show_default=True,
    type=click.Path(path_type=Path),
    help="run root: data, cache, runs, pins and packs live below it (relative to the current folder)",
)


def policies_callback(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """The bundle is validated while the options are read: a refused one leaves no run root."""
    from seg1b_dask.io.refdata import refdata_version
    from seg1b_dask.policies.bundle import load_bundle

    load_bundle(value, refdata_version())
    return value


policies_option = click.option(
    "--policies",
    default=str(DEFAULT_POLICIES),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=policies_callback,
    help="policy bundle folder (the remediation bundle shipped with the package by default)",
)
upstream_option = click.option(
    "--upstream",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="a 1A bundle (default: the stand-in for --seed, written under the run root)",
)
scale_option = click.option(
    "--scale",
    default=None,
    type=click.IntRange(1, 1_000_000_000),
    help="run on the seed's 1A stand-in at about this many outlets (written once under the run root)",
)
seed_option = click.option(
    "--seed", default=42, show_default=True, type=click.IntRange(0, U64_MAX), help="the 1A seed (0 … 2^64−1)"
)


def scheduler_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else check_scheduler(value)


def parse_seeds(value: str | None) -> list[int] | None:
    """``42,7,101`` → [42, 7, 101]; anything else is one coded line naming the bad item."""
    if value is None:
        return None
    seeds = []
    for item in (i.strip() for i in value.split(",")):
        if not item.isdigit() or int(item) > U64_MAX:
            message = "seeds are integers 0 … 2^64−1, comma-separated, none empty"
            raise Seg1BError(Code.E_BAD_OPTION, message, key=f"--seeds {item}")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise Seg1BError(Code.E_BAD_OPTION, "a seed is listed twice", key=f"--seeds {value}")
    return seeds


def _existing(root: Path) -> RunRoot:
    """The run root a command reads from; a missing one is refused, never created."""
    if not root.is_dir():
        raise Seg1BError(Code.E_UNKNOWN_RUN, "no run root here: run `seg1b run` first, or pass --root", file=root)
    return RunRoot.open(root)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


scheduler_option = click.option(
    "--scheduler",
    default="threads",
    show_default=True,
    callback=scheduler_callback,
    help="threads | processes | synchronous | distributed (a local cluster) | tls://HOST:PORT (or tcp://)",
)


connect_timeout_option = click.option(
    "--connect-timeout",
    default=Execution.connect_timeout,
    show_default=True,
    type=click.FloatRange(0.1),
    help="seconds to reach a running scheduler and see a worker join (raise it where the cluster starts with the job)",
)


def task_size_options(fn: Any) -> Any:
    """--country-batch and --sites-per-task: how work is cut into tasks (never the outputs)."""
    fn = click.option(
        "--sites-per-task",
        default=Execution.sites_per_task,
        show_default=True,
        type=click.IntRange(1),
        help="at most this many sites per task, a larger country alone (outputs never depend on it)",
    )(fn)
    return click.option(
        "--country-batch",
        default=Execution.country_batch,
        show_default=True,
        type=click.IntRange(1),
        help="at most this many countries per task (outputs never depend on it)",
    )(fn)
