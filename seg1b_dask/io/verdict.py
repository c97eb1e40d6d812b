"""What a run's 1B validation bundle vouches for (DESIGN §3, "no PASS, no read"): whether
its flag is valid for exactly the run's bundle, tokens and egress, and which structural
checks S9 recorded in it. Graders take the seal state and the structural verdict from
here, never from ``run.json``, which no seal covers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.hashing import tree_digest, verify_bundle
from seg1b_dask.io.lineage import MANIFEST, check_tokens, read_manifest, safe_join

CHECKS = "checks.json"
# A flag that is missing, malformed or wrong for the bundle's bytes: the bundle is unsealed.
# Anything else (tokens that disagree with the run, egress bytes that differ from those a
# valid flag sealed, a link out of the bundle) is tampering with sealed data: refused.
UNSEALED = frozenset({Code.E_BUNDLE_FLAG_MISSING, Code.E_BUNDLE_FLAG_MISMATCH, Code.E_BUNDLE_INDEX})


@dataclass(frozen=True)
class Verdict:
    folder: Path  # the validation bundle
    problem: str  # why it is not sealed ("" when it is)
    failed_checks: tuple[str, ...]  # structural checks failing in checks.json
    egress: Path | None  # the egress the flag vouches for (None when unsealed)

    @property
    def sealed(self) -> bool:
        return not self.problem

    @property
    def failures(self) -> list[str]:
        """The structural gates this run fails: ``unsealed``, then each failing check."""
        return (["unsealed"] if self.problem else []) + [f"structural:{c}" for c in self.failed_checks]


def bundle_verdict(run: dict[str, Any], root: Path) -> Verdict:
    """The run's validation bundle judged: its flag verified by the 1A law, its tokens and
    the egress bytes against the run, its ``checks.json`` read. Unsealed, the figures beside
    it are S9's unverified record, shown for diagnosis only."""
    folder = safe_join(root, run["outputs"]["validation_bundle"])
    try:
        index, _ = verify_bundle(folder)
    except Seg1BError as exc:
        if exc.code not in UNSEALED:
            raise
        return Verdict(folder, f"{exc.code}: {exc.message}", _failed_checks(folder), None)
    return Verdict(folder, "", _failed_checks(folder), _sealed_egress(run, root, folder, index))


def _sealed_egress(run: dict[str, Any], root: Path, folder: Path, index: dict[str, Any]) -> Path:
    """The run's egress, refused unless the sealed index and the egress carry the run's
    tokens and the egress bytes are those the flag sealed."""
    egress = safe_join(root, run["outputs"]["site_locations"])
    check_tokens(egress)
    for token in ("seed", "parameter_hash", "manifest_fingerprint"):
        if str(index.get(token)) != str(run[token]):
            raise Seg1BError(
                Code.E_TOKEN_MISMATCH,
                f"the sealed bundle says {token}={index.get(token)}, run.json says {run[token]}",
                file=folder / "index.json",
                key=token,
            )
    for token, value in read_manifest(egress)["tokens"].items():
        if str(value) != str(run[token]):
            raise Seg1BError(
                Code.E_TOKEN_MISMATCH,
                f"site_locations says {token}={value}, run.json says {run[token]}",
                file=egress,
                key=token,
            )
    sealed = json.loads((folder / "egress.json").read_text())["site_locations_sha256"]
    actual = tree_digest(egress, exclude=frozenset({MANIFEST}))
    if sealed != actual or read_manifest(egress)["content_sha256"] != actual:
        raise Seg1BError(
            Code.E_BUNDLE_FLAG_MISMATCH,
            "site_locations bytes differ from those the 1B validation bundle sealed",
            file=egress,
        )
    return egress


def _failed_checks(folder: Path) -> tuple[str, ...]:
    """The checks S9 recorded as failing; a record that cannot be read fails whole."""
    try:
        checks = json.loads((folder / CHECKS).read_text())
        failed = tuple(sorted(name for name, check in checks.items() if check["passed"] is not True))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return (f"{CHECKS} unreadable",)
    return failed if checks else (f"{CHECKS} empty",)
