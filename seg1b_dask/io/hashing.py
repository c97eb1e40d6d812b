"""Canonical hashing and the bundle flag law shared by 1A input and 1B validation bundles.

A bundle is a folder with ``index.json`` listing every file once (itself included, the
flag excluded) by relative path, and ``_passed.flag`` holding ``sha256_hex = <hex>``: the
SHA-256 of the listed files' bytes concatenated in ASCII order of path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from seg1b_dask.errors import Code, Seg1BError

FLAG_NAME = "_passed.flag"
INDEX_NAME = "index.json"
# Outside the sealed content: the flag itself and the publishing manifest around a bundle.
_ENVELOPE = frozenset({FLAG_NAME, "_manifest.json"})


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path, exclude: frozenset[str] = frozenset()) -> str:
    """SHA-256 over (relative path, bytes) of every file below ``root``, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude or ".tmp-" in path.name:  # a writer's temporary, not yet (or never) renamed
            continue
        digest.update(rel.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def _concat_digest(root: Path, paths: list[str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(paths):
        with open(root / rel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def seal_bundle(root: Path, meta: dict[str, Any]) -> str:
    """Write ``index.json`` (all files, itself included) and ``_passed.flag``; return the hex."""
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).as_posix() not in _ENVELOPE
    )
    files = sorted(set(files) | {INDEX_NAME})
    index = dict(meta, files=[{"path": f} for f in files])
    (root / INDEX_NAME).write_bytes(json.dumps(index, indent=2, sort_keys=True).encode() + b"\n")
    hex_digest = _concat_digest(root, files)
    (root / FLAG_NAME).write_text(f"sha256_hex = {hex_digest}\n")
    return hex_digest


def verify_bundle(root: Path) -> tuple[dict[str, Any], str]:
    """Refuse a bundle whose index or flag is missing, malformed or does not match the bytes."""
    index_path = root / INDEX_NAME
    claimed = read_flag(root)
    if not index_path.is_file():
        raise Seg1BError(Code.E_BUNDLE_INDEX, "bundle has no index.json", file=index_path)
    try:
        index = json.loads(index_path.read_text())
        listed = [entry["path"] for entry in index["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise Seg1BError(Code.E_BUNDLE_INDEX, f"index.json is malformed ({exc})", file=index_path) from None
    seen: set[str] = set()
    for rel in listed:
        if not isinstance(rel, str) or not rel:
            raise Seg1BError(
                Code.E_BUNDLE_INDEX, "index entry path is not a non-empty string", file=index_path, key=repr(rel)
            )
        pure = PurePosixPath(rel)
        if pure.as_posix() != rel:
            raise Seg1BError(
                Code.E_BUNDLE_INDEX, "index paths must be normalised (no './', no '//')", file=index_path, key=rel
            )
        if pure.is_absolute() or ".." in pure.parts:
            raise Seg1BError(Code.E_BUNDLE_INDEX, "index lists a path outside the bundle", file=index_path, key=rel)
        if rel in seen:
            raise Seg1BError(Code.E_BUNDLE_INDEX, "index lists a file twice", file=index_path, key=rel)
        seen.add(rel)
        real = (root / rel).resolve()
        if real != root.resolve() and root.resolve() not in real.parents:
            raise Seg1BError(
                Code.E_PATH_ESCAPE, f"a link inside the bundle points outside it (to {real})", file=root / rel, key=rel
            )
        if not (root / rel).is_file():
            raise Seg1BError(Code.E_BUNDLE_INDEX, "index lists a file that is missing", file=index_path, key=rel)
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - _ENVELOPE
    unlisted = sorted(present - seen)
    if unlisted:
        raise Seg1BError(
            Code.E_BUNDLE_INDEX, "bundle holds a file the index does not list", file=index_path, key=unlisted[0]
        )
    actual = _concat_digest(root, listed)
    if claimed != actual:
        raise Seg1BError(
            Code.E_BUNDLE_FLAG_MISMATCH,
            f"flag says {claimed[:16]}… but the listed files hash to {actual[:16]}…",
            file=root / FLAG_NAME,
        )
    return index, actual


def read_flag(root: Path) -> str:
    """The hex a bundle's flag claims, unverified (``verify_bundle`` checks it against the
    bytes): enough to name which bundle a record belongs to."""
    flag_path = root / FLAG_NAME
    if not flag_path.is_file():
        raise Seg1BError(Code.E_BUNDLE_FLAG_MISSING, "bundle has no _passed.flag: no PASS, no read", file=flag_path)
    try:
        text = flag_path.read_bytes().decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not text.startswith("sha256_hex = "):
        raise Seg1BError(Code.E_BUNDLE_FLAG_MISMATCH, "flag is not of the form 'sha256_hex = <hex>'", file=flag_path)
    return text.split("=", 1)[1].strip()
