"""The image's cluster roles: ``seg1b scheduler`` and ``seg1b worker`` start Dask's own
scheduler and worker, so one entry point serves the scheduler, the workers and the job
(``Dockerfile``, ``cluster/``). A worker first checks the run-root volume it was given, and
both check the TLS files they were given."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from seg1b_dask.engine.execution import check_tls_file
from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.runroot import RunRoot

Role = Literal["scheduler", "worker"]
TLS_FILE_OPTIONS = ("--tls-ca-file", "--tls-cert", "--tls-key")


def check_volume(root: Path) -> None:
    """A worker writes its tasks' outputs under the run root: the shared volume must be
    mounted here (not created empty by this process) and writable, else one coded line."""
    if not root.is_dir():
        raise Seg1BError(
            Code.E_ROOT_NOT_SHARED,
            "the run root is not mounted on this worker (mount the shared volume at the job's path)",
            file=root,
            key="--root",
        )
    RunRoot.open(root)  # writable, and a filesystem that publishing works on


def check_tls_files(args: Sequence[str]) -> None:
    """Each ``--tls-*`` file readable (a key mounted with the wrong owner, a mistyped path):
    one coded line naming it, not Dask's traceback at start-up."""
    for option, value in zip(args, [*args[1:], None], strict=True):
        name, _, inline = option.partition("=")
        path = inline or value
        if name in TLS_FILE_OPTIONS and path is not None:
            check_tls_file(path, f"the {name} file (owner, mode, mount?)", name)


def start(role: Role, args: Sequence[str]) -> None:
    """Run Dask's own command line for ``role`` with ``args`` (every option of ``dask
    scheduler`` / ``dask worker``); it returns when the scheduler or worker stops."""
    check_tls_files(args)
    if role == "scheduler":
        from distributed.cli.dask_scheduler import main as dask_main
    else:
        from distributed.cli.dask_worker import main as dask_main
    dask_main.main(args=list(args), prog_name=f"{Path(sys.argv[0]).name} {role}")
