"""Coded, user-facing errors. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class Seg1BError(Exception):
    """A refusal with a stable code, naming the file and the offending key or row."""

    def __init__(self, code: str, message: str, *, file: object = None, key: object = None) -> None:
        self.code = code
        self.file = None if file is None else str(file)
        self.key = None if key is None else str(key)
        where = "".join(
            part for part in (f" [file: {self.file}]" if self.file else "", f" [at: {self.key}]" if self.key else "")
        )
        super().__init__(f"{code}: {message}{where}")


# Codes (stable; documented in README).
E_BUNDLE_FLAG_MISSING = "E_BUNDLE_FLAG_MISSING"
E_BUNDLE_FLAG_MISMATCH = "E_BUNDLE_FLAG_MISMATCH"
E_BUNDLE_INDEX = "E_BUNDLE_INDEX"
E_UPSTREAM_SCHEMA = "E_UPSTREAM_SCHEMA"
E_UNKNOWN_ISO = "E_UNKNOWN_ISO"
E_SITE_ORDER_GAP = "E_SITE_ORDER_GAP"
E_NONPOSITIVE_COUNT = "E_NONPOSITIVE_COUNT"
E_DUPLICATE_KEY = "E_DUPLICATE_KEY"
E_TOKEN_MISMATCH = "E_TOKEN_MISMATCH"
E_POLICY_UNKNOWN_KEY = "E_POLICY_UNKNOWN_KEY"
E_POLICY_INVALID = "E_POLICY_INVALID"
E_POLICY_MISSING = "E_POLICY_MISSING"
E_DENYLISTED = "E_DENYLISTED"
E_INELIGIBLE_COUNTRY = "E_INELIGIBLE_COUNTRY"
E_PUBLISH_CONFLICT = "E_PUBLISH_CONFLICT"
E_PATH_ESCAPE = "E_PATH_ESCAPE"
E_VALIDATION_FAILED = "E_VALIDATION_FAILED"
E_MASS_INFEASIBLE = "E_MASS_INFEASIBLE"
E_REMASS_INFEASIBLE = "E_REMASS_INFEASIBLE"
