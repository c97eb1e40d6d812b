"""How a run executes: scheduler, worker count, task sizes. Outputs never depend on these
settings (tests compare bytes across them), so they are recorded in the run receipt but
are not policy and not part of ``parameter_hash``."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dask


@dataclass(frozen=True)
class Execution:
    scheduler: str = "threads"  # threads | processes | synchronous | distributed | tcp://host:port | attached
    workers: int | None = None
    country_batch: int = 24  # countries per S4-S7/S9 task
    band_shards: int = 2  # Zarr shards (row bands) per S1/S2 task

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The local scheduler of the current run, per thread/context: concurrent runs in one
# process (or inside a distributed worker) never change each other's scheduler.
_LOCAL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("seg1b_local_scheduler", default=None)


@contextlib.contextmanager
def executing(execution: Execution) -> Iterator[None]:
    """Open the requested scheduler for the duration of a run (``attached``: use the
    distributed client the caller already opened)."""
    if execution.scheduler == "attached":
        yield
        return
    if execution.scheduler in ("threads", "processes", "synchronous"):
        kwargs: dict[str, Any] = {"scheduler": execution.scheduler}
        if execution.workers and execution.scheduler != "synchronous":
            kwargs["num_workers"] = execution.workers
        token = _LOCAL.set(kwargs)
        try:
            yield
        finally:
            _LOCAL.reset(token)
        return
    from distributed import Client, LocalCluster

    if execution.scheduler == "distributed":
        cluster = LocalCluster(
            n_workers=execution.workers or 2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        with cluster, Client(cluster):
            yield
    else:
        with Client(execution.scheduler):
            yield


def compute(tasks: Sequence[Any]) -> list[Any]:
    """Compute delayed tasks on the active scheduler; results in task order."""
    if not tasks:
        return []
    return list(dask.compute(*tasks, **(_LOCAL.get() or {})))


def batches(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
