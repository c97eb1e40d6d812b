"""Stopping on Ctrl-C or SIGTERM: one line, the cluster closed, exit 130 (143 for SIGTERM) in
seconds, nothing half-written, the rerun resumes from the cache.

A terminal's Ctrl-C reaches every process of its foreground group, LocalCluster workers
included; only the driver decides how a job stops, so workers start with SIGINT ignored and
are closed by the driver. SIGTERM (what Kubernetes and Compose send) becomes the same
interrupt in the main thread. The driver threads that run seeds or trials are daemons: an
interrupt never waits for them; the cluster they submit to is closed under them, and all
they publish is staged and renamed whole."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Interrupted(KeyboardInterrupt):
    """An interrupt by a signal other than SIGINT; ``exit_code`` is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    return interrupt.exit_code if isinstance(interrupt, Interrupted) else 128 + signal.SIGINT


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _handling(signum: int, handler: Any) -> Iterator[None]:
    """``handler`` for ``signum`` while the block runs, the previous one back afterwards; off
    the main thread (where Python allows no handler) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_interrupts() -> contextlib.AbstractContextManager[None]:
    """While the block runs, SIGTERM raises ``Interrupted`` in the main thread."""
    return _handling(signal.SIGTERM, _raise_interrupted)


def sigint_ignored() -> contextlib.AbstractContextManager[None]:
    """Processes started inside this block ignore SIGINT (an ignored signal stays ignored
    across fork and exec, and Python then installs no KeyboardInterrupt handler)."""
    return _handling(signal.SIGINT, signal.SIG_IGN)


THREAD_PREFIX = "seg1b-"  # the driver threads ``in_threads`` starts


def abandoned_threads() -> bool:
    """Whether driver threads of seeds or trials are still alive (after an interrupt)."""
    return any(t.is_alive() and t.name.startswith(THREAD_PREFIX) for t in threading.enumerate())


def silence_abandoned_reads() -> None:
    """An interrupt can leave reads pending on Zarr's I/O event loop (a thread of its own); at
    the process's end asyncio reports each as "Task was destroyed but it is pending!". They
    were abandoned on purpose (nothing they read gets published), so after the one interrupt
    line asyncio's log says nothing more."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)


def in_threads(fn: Callable[[Item], Result], items: Sequence[Item], threads: int, name: str) -> list[Result]:
    """``fn`` over ``items`` on at most ``threads`` daemon threads, results in item order.
    An error waits for the other items to end (none is left writing into a folder its caller
    removes), then the first error in item order is raised; an interrupt of the waiting
    thread propagates at once (the threads, daemons, are left to the process's end)."""
    if not items:
        return []
    results: list[Any] = [None] * len(items)
    errors: list[BaseException | None] = [None] * len(items)
    queue = iter(range(len(items)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                index = next(queue, None)
            if index is None:
                return
            try:
                results[index] = fn(items[index])
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                errors[index] = exc

    pool = [
        threading.Thread(target=work, name=f"{THREAD_PREFIX}{name}-{i}", daemon=True)
        for i in range(max(1, min(threads, len(items))))
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for error in errors:
        if error is not None:
            raise error
    return results
