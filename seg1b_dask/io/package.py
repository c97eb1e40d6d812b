"""Where the package's own files live: the code, the shipped policy bundles and the vendored
reference data (a wheel carries them all, so an installed product runs from any folder)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
BUNDLES = PACKAGE_DIR / "policies" / "bundles"
REFDATA_DIR = PACKAGE_DIR / "refdata"


def files_digest(files: list[Path] | tuple[Path, ...]) -> str:
    """One digest of some of the package's source files (their paths and bytes): the code a
    run or a state ran, sealed into fingerprints and cache keys."""
    from seg1b_dask.io.hashing import canonical_json, sha256_file, sha256_hex

    return sha256_hex(canonical_json([[p.relative_to(PACKAGE_DIR).as_posix(), sha256_file(p)] for p in sorted(files)]))
