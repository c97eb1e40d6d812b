"""How a run executes: scheduler, worker count, task sizes. Outputs never depend on these
settings (tests compare bytes across them), so they are recorded in the run receipt but
are not policy and not part of ``parameter_hash``."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
from dask.callbacks import Callback

from seg1b_dask.engine.interrupts import sigint_ignored
from seg1b_dask.errors import Code, Seg1BError

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "distributed")
SCHEDULER_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://[^\s/]+(:\d+)?/?$")
# What a client of a tls:// scheduler trusts and presents: Dask's configuration keys, each
# also set by its environment variable (cluster/make-certs.sh makes the files), and whether
# it is required (the key may be left out when the certificate file holds it).
TLS_CLIENT_FILES = {
    "distributed.comm.tls.ca-file": ("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", True),
    "distributed.comm.tls.client.cert": ("DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", True),
    "distributed.comm.tls.client.key": ("DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", False),
}


def check_scheduler(value: str) -> str:
    """A scheduler name or a ``tls://HOST:PORT`` (or ``tcp://``) address, else one coded line."""
    if value in (*LOCAL_SCHEDULERS, "attached") or SCHEDULER_ADDRESS.match(value):
        return value
    raise Seg1BError(
        Code.E_BAD_OPTION,
        f"unknown scheduler {value!r}: use {' | '.join(LOCAL_SCHEDULERS)} or tls://HOST:PORT",
        key="--scheduler",
    )


def connect(address: str, root: Path, timeout: float) -> Any:
    """A distributed Client on a running scheduler with at least one worker, every worker
    seeing the run ``root``. An unreachable scheduler, no worker, or a worker without the
    shared root is one coded line after ``timeout`` seconds, never a long hang."""
    from distributed import Client
    from distributed.comm.core import FatalCommClosedError

    from seg1b_dask.io.runroot import check_shared

    if address.startswith("tls://"):
        check_tls_client(address)
    try:
        client = Client(check_scheduler(address), timeout=f"{timeout}s")
    except (OSError, TimeoutError) as exc:
        said = (  # Dask's fatal close: the TLS handshake itself failed (another CA, a bad certificate)
            f"the TLS handshake failed ({str(exc).split('.')[0]}): is the client certificate from the cluster's CA?"
            if isinstance(exc, FatalCommClosedError)
            else f"no Dask scheduler answered within {timeout:g} s ({type(exc).__name__}); see --connect-timeout"
        )
        raise Seg1BError(Code.E_SCHEDULER_UNREACHABLE, said, key=address) from None
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise Seg1BError(
                Code.E_SCHEDULER_UNREACHABLE,
                f"the scheduler answered but no worker joined within {timeout:g} s; see --connect-timeout",
                key=address,
            ) from None
        check_shared(client, root)
    except BaseException:
        client.close()
        raise
    return client


def check_tls_client(address: str) -> None:
    """A tls:// scheduler accepts only clients with a certificate from the cluster's CA:
    without one configured (or readable), say which setting is missing instead of waiting
    out the connect timeout on a handshake that cannot succeed."""
    for key, (variable, required) in TLS_CLIENT_FILES.items():
        path = dask.config.get(key, None)
        if path:
            check_tls_file(path, f"Dask's {key}", variable)
        elif required:
            raise Seg1BError(
                Code.E_TLS_CONFIG,
                f"a tls:// scheduler needs Dask's {key} (set {variable}); cluster/make-certs.sh makes them",
                key=address,
            )


def check_tls_file(path: str, what: str, setting: str) -> None:
    """A certificate or key file the process must read (a key mounted with the wrong owner,
    a mistyped path): one coded line naming it and the setting that gave it."""
    if not os.access(path, os.R_OK):
        raise Seg1BError(Code.E_TLS_CONFIG, f"cannot read {what}", file=path, key=setting)


@dataclass(frozen=True)
class Execution:
    scheduler: str = "threads"  # threads | processes | synchronous | distributed | tcp://host:port | attached
    workers: int | None = None
    country_batch: int = 24  # at most this many countries per S4-S9 task…
    sites_per_task: int = 250_000  # …and no more sites than this (a larger country is a task alone)
    band_shards: int = 2  # Zarr shards (row bands) per S1/S2 task
    connect_timeout: float = 10.0  # seconds to reach a tcp:// scheduler and see a worker join

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def country_batches(self, sites: Mapping[str, int]) -> list[list[str]]:
        """Consecutive countries (in code order) per task, bounded in count and in sites, so
        a task's memory does not grow with the whole run's sites."""
        out: list[list[str]] = []
        load = 0
        for iso2 in sorted(sites):
            n = sites[iso2]
            if not out or len(out[-1]) >= self.country_batch or (out[-1] and load + n > self.sites_per_task):
                out.append([])
                load = 0
            out[-1].append(iso2)
            load += n
        return out


# The local scheduler of the current run, per thread/context: concurrent runs in one
# process (or inside a distributed worker) never change each other's scheduler.
_LOCAL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("seg1b_local_scheduler", default=None)


@contextlib.contextmanager
def executing(execution: Execution, root: Path) -> Iterator[None]:
    """Open the requested scheduler for the duration of a run under ``root`` (``attached``:
    use the distributed client the caller already opened)."""
    if execution.scheduler == "attached":
        yield
        return
    if execution.scheduler in ("threads", "processes", "synchronous"):
        kwargs: dict[str, Any] = {"scheduler": execution.scheduler}
        if execution.workers and execution.scheduler != "synchronous":
            kwargs["num_workers"] = execution.workers
        with _process_pool(execution) as pool:
            if pool is not None:
                kwargs["pool"] = pool
            token = _LOCAL.set(kwargs)
            try:
                yield
            finally:
                _LOCAL.reset(token)
        return
    local = execution.scheduler == "distributed"
    with dask_cluster(None if local else execution.scheduler, execution.workers, root, execution.connect_timeout):
        yield


@contextlib.contextmanager
def _process_pool(execution: Execution) -> Iterator[ProcessPoolExecutor | None]:
    """The processes scheduler's worker processes, started once for the whole run: dask
    would start (and import the chain in) a new pool for every state's compute."""
    if execution.scheduler != "processes":
        yield None
        return
    from dask.multiprocessing import get_context
    from dask.system import CPU_COUNT

    pool = ProcessPoolExecutor(execution.workers or CPU_COUNT, mp_context=get_context())
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


CLOSE_SECONDS = 5.0  # at most this long to close a client, then its LocalCluster


@contextlib.contextmanager
def dask_cluster(scheduler: str | None, workers: int | None, root: Path, connect_timeout: float) -> Iterator[Any]:
    """A client of the running scheduler at ``scheduler`` (its workers all seeing ``root``),
    or of a LocalCluster of ``workers`` processes that ignore SIGINT: a terminal's Ctrl-C
    reaches the driver, which stops them. On the way out, by an error or an interrupt too,
    the client closes first (its pending tasks are released), then the LocalCluster."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = connect(scheduler, root, connect_timeout)
    else:
        with sigint_ignored():
            cluster = LocalCluster(
                n_workers=workers or 2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                # Its workers' log lines (tasks cancelled, comms closed on the way out) are for the
                # dashboard; a task's error reaches the driver as a coded line. SEG1B_DEBUG shows them.
                silence_logs=logging.WARNING if os.environ.get("SEG1B_DEBUG") else logging.CRITICAL,
            )
        try:
            client = Client(cluster)
        except BaseException:
            _closed(cluster)
            raise
    try:
        yield client
    finally:
        _closed(client)
        if cluster is not None:
            _closed(cluster)


def _closed(closable: Any) -> None:
    """Close a client or cluster within ``CLOSE_SECONDS``; one that does not answer in time is
    left to the process's end (its workers die with it), never reported as the run's error."""
    with contextlib.suppress(TimeoutError, OSError):
        closable.close(timeout=CLOSE_SECONDS)


# Who hears about finished tasks (done, total) during a run: the command's progress bar.
TaskProgress = Callable[[int, int], None]
_PROGRESS: contextvars.ContextVar[TaskProgress | None] = contextvars.ContextVar("seg1b_task_progress", default=None)


@contextlib.contextmanager
def reporting(on_tasks: TaskProgress | None) -> Iterator[None]:
    """Report every graph's finished tasks to ``on_tasks`` while the block runs."""
    token = _PROGRESS.set(on_tasks)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class _LocalProgress(Callback):
    """Finished / total tasks of a graph on a local scheduler."""

    def __init__(self, on_tasks: TaskProgress) -> None:
        super().__init__()
        self.on_tasks, self.total = on_tasks, 0

    def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
        self.total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.on_tasks(0, self.total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict[str, Any], worker_id: Any) -> None:
        self.on_tasks(len(state["finished"]), self.total)


def compute(tasks: Sequence[Any]) -> list[Any]:
    """Compute delayed tasks on the active scheduler; results in task order. When a task
    fails, the tasks already running finish before the error propagates, so none of them
    writes into a staging folder the caller is about to remove."""
    if not tasks:
        return []
    on_tasks = _PROGRESS.get()
    local = _LOCAL.get()
    if local is None:  # a distributed client, if one is active; else dask's default scheduler
        client = _active_client()
        if client is None:
            with _LocalProgress(on_tasks) if on_tasks else contextlib.nullcontext():
                return list(dask.compute(*tasks))
        from distributed import as_completed, wait

        futures = client.compute(list(tasks))
        try:
            if on_tasks:
                on_tasks(0, len(futures))
                for done, _ in enumerate(as_completed(futures), 1):
                    on_tasks(done, len(futures))
            return list(client.gather(futures))
        except KeyboardInterrupt:  # stop now: the caller closes the client, which releases the rest
            raise
        except BaseException:
            wait(futures)
            raise
    with _LocalProgress(on_tasks) if on_tasks else contextlib.nullcontext():
        if local["scheduler"] == "threads":
            with ThreadPoolExecutor(local.get("num_workers") or os.cpu_count()) as pool:
                return list(dask.compute(*tasks, scheduler="threads", pool=pool))  # exit waits for running tasks
        try:
            return list(dask.compute(*tasks, **local))
        except BaseException:
            if "pool" in local:  # the run's pool: its running tasks end before the error goes on; later computes
                local.pop("pool").shutdown(wait=True, cancel_futures=True)  # start their own pool
            raise


def _active_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None
