"""Every error code, in one enum, and the three families callers catch.

- ``InputError``: the user's input is wrong (a 1A bundle, a policy, an option). Exit 2.
- ``EnvironmentFault``: the machine refuses (read-only or full disk, unreachable scheduler,
  a run root another command holds, a corrupt file in the run root). Exit 2.
- ``InternalError``: an invariant of the engine broke (``E_INTERNAL``, and the fail-closed
  checks ``E_VALIDATION_FAILED``). Exit 3; the message says it is a bug.

The CLI prints each as one line: ``error: CODE: message [file: …] [at: key or row]``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    # 1A bundle and its catalogue
    E_BUNDLE_FLAG_MISSING = "E_BUNDLE_FLAG_MISSING"
    E_BUNDLE_FLAG_MISMATCH = "E_BUNDLE_FLAG_MISMATCH"
    E_BUNDLE_INDEX = "E_BUNDLE_INDEX"
    E_UPSTREAM_SCHEMA = "E_UPSTREAM_SCHEMA"
    E_UPSTREAM_EMPTY = "E_UPSTREAM_EMPTY"
    E_UNKNOWN_ISO = "E_UNKNOWN_ISO"
    E_SITE_ORDER_GAP = "E_SITE_ORDER_GAP"
    E_NONPOSITIVE_COUNT = "E_NONPOSITIVE_COUNT"
    E_DUPLICATE_KEY = "E_DUPLICATE_KEY"
    E_PATH_ESCAPE = "E_PATH_ESCAPE"
    # policies
    E_POLICY_UNKNOWN_KEY = "E_POLICY_UNKNOWN_KEY"
    E_POLICY_INVALID = "E_POLICY_INVALID"
    E_POLICY_MISSING = "E_POLICY_MISSING"
    E_DENYLISTED = "E_DENYLISTED"
    E_INELIGIBLE_COUNTRY = "E_INELIGIBLE_COUNTRY"
    E_NO_ELIGIBLE_COUNTRY = "E_NO_ELIGIBLE_COUNTRY"
    E_MASS_INFEASIBLE = "E_MASS_INFEASIBLE"
    E_REMASS_INFEASIBLE = "E_REMASS_INFEASIBLE"
    # options and references on the command line
    E_BAD_OPTION = "E_BAD_OPTION"
    E_OUT_NOT_EMPTY = "E_OUT_NOT_EMPTY"
    E_UNKNOWN_RUN = "E_UNKNOWN_RUN"
    E_UNKNOWN_PHASE = "E_UNKNOWN_PHASE"
    # the run root's discipline
    E_TOKEN_MISMATCH = "E_TOKEN_MISMATCH"
    E_PUBLISH_CONFLICT = "E_PUBLISH_CONFLICT"
    E_BASELINE_PINNED = "E_BASELINE_PINNED"
    E_PHASE_LOCKED = "E_PHASE_LOCKED"
    E_PROMOTION_REFUSED = "E_PROMOTION_REFUSED"
    E_DOD_FAILED = "E_DOD_FAILED"  # a phase's Definition of Done does not hold: it cannot be locked
    E_REOPEN_REFUSED = "E_REOPEN_REFUSED"  # no reason, or no run showing the contradiction
    E_FREEZE_REFUSED = "E_FREEZE_REFUSED"  # only a GREEN pack becomes the authority
    E_NOT_REPRODUCIBLE = "E_NOT_REPRODUCIBLE"  # a run of one seed gave other bytes the second time
    E_VALIDATION_FAILED = "E_VALIDATION_FAILED"
    # the environment
    E_ROOT_UNWRITABLE = "E_ROOT_UNWRITABLE"
    E_ROOT_UNSUPPORTED = "E_ROOT_UNSUPPORTED"  # a filesystem without atomic rename or hard links
    E_ROOT_NOT_SHARED = "E_ROOT_NOT_SHARED"  # a cluster worker does not see the run root
    E_DISK_FULL = "E_DISK_FULL"
    E_ROOT_BUSY = "E_ROOT_BUSY"
    E_CORRUPT_FILE = "E_CORRUPT_FILE"
    E_SCHEDULER_UNREACHABLE = "E_SCHEDULER_UNREACHABLE"
    E_TLS_CONFIG = "E_TLS_CONFIG"  # a tls:// scheduler, but no readable CA or client certificate configured
    E_IO = "E_IO"
    # the engine itself
    E_INTERNAL = "E_INTERNAL"


class Seg1BError(Exception):
    """A refusal with a stable code, naming the file and the offending key or row.

    ``Seg1BError(code, …)`` builds the family the code belongs to, so ``except InputError``
    catches every input refusal wherever it was raised.
    """

    exit_code = 2

    def __new__(cls, code: str, *args: Any, **kwargs: Any) -> Seg1BError:
        family = FAMILY.get(Code(code), InputError) if cls is Seg1BError else cls
        return super().__new__(family)

    def __init__(self, code: str, message: str, *, file: object = None, key: object = None) -> None:
        self.code = Code(code)
        self.message = message
        self.file = None if file is None else str(file)
        self.key = None if key is None else str(key)
        where = "".join(
            part for part in (f" [file: {self.file}]" if self.file else "", f" [at: {self.key}]" if self.key else "")
        )
        super().__init__(f"{self.code}: {message}{where}")

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling across Dask workers
        return (_rebuild, (self.code.value, self.message, self.file, self.key))


def _rebuild(code: str, message: str, file: str | None, key: str | None) -> Seg1BError:
    return Seg1BError(code, message, file=file, key=key)


class InputError(Seg1BError):
    """Wrong input from the user: fix the named file, key or option."""


class EnvironmentFault(Seg1BError):
    """The machine or the run root refuses: fix the environment, then run again."""


class InternalError(Seg1BError):
    """A broken invariant of the engine: a bug, never the user's fault."""

    exit_code = 3

    def __init__(self, code: str, message: str, *, file: object = None, key: object = None) -> None:
        super().__init__(code, message, file=file, key=key)
        self.args = (f"{self} (this is a bug in seg1b; please report it)",)


FAMILY: dict[Code, type[Seg1BError]] = {
    **{c: EnvironmentFault for c in (Code.E_ROOT_UNWRITABLE, Code.E_DISK_FULL, Code.E_ROOT_BUSY, Code.E_CORRUPT_FILE)},
    Code.E_ROOT_UNSUPPORTED: EnvironmentFault,
    Code.E_ROOT_NOT_SHARED: EnvironmentFault,
    Code.E_SCHEDULER_UNREACHABLE: EnvironmentFault,
    Code.E_TLS_CONFIG: EnvironmentFault,
    Code.E_IO: EnvironmentFault,
    # The engine's own fail-closed checks (S6, S7, S9): validated input never trips them.
    Code.E_VALIDATION_FAILED: InternalError,
    Code.E_NOT_REPRODUCIBLE: InternalError,
    Code.E_INTERNAL: InternalError,
}
