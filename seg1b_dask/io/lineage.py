"""Lineage tokens, partition paths and atomic write-once publishing (DESIGN §3).

Every published dataset folder carries ``_manifest.json`` with its tokens and a digest of
its bytes: the tokens in the path equal the tokens in the manifest. Publishing writes a
temporary sibling and renames it; republishing identical bytes is a no-op, different bytes
an error. A crash leaves at most a ``.tmp-`` sibling, never a partial dataset.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.hashing import tree_digest

MANIFEST = "_manifest.json"
# Containers on different hosts often share pids (1, 7…): the host name keeps two writers'
# temporary names apart on a run root shared between machines.
HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:63] or "host"
Scope = Literal["global", "plan", "egress", "run"]


@dataclass(frozen=True)
class Tokens:
    seed: int
    parameter_hash: str
    manifest_fingerprint: str

    def for_scope(self, scope: Scope) -> dict[str, object]:
        if scope == "global":
            return {"parameter_hash": self.parameter_hash}
        if scope == "egress":
            return {"seed": self.seed, "manifest_fingerprint": self.manifest_fingerprint}
        return {
            "seed": self.seed,
            "parameter_hash": self.parameter_hash,
            "manifest_fingerprint": self.manifest_fingerprint,
        }


def tokens_from_path(path: Path) -> dict[str, str]:
    return dict(p.split("=", 1) for p in Path(path).parts if "=" in p)


def safe_join(root: Path, relative: str | Path) -> Path:
    """Join under ``root`` and refuse anything that escapes it."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise Seg1BError(Code.E_PATH_ESCAPE, "path escapes the run root", file=root, key=str(relative))
    return target


def stage_path(final: Path) -> Path:
    """The hidden temporary sibling a file or folder is written to before its rename:
    unique per host, process and thread, and recognisable (``.tmp-``) for cleanup."""
    return final.parent / f".{final.name}.tmp-{HOST}-{os.getpid()}-{threading.get_ident()}"


def _manifest(tokens: dict[str, object], digest: str, dataset: str) -> bytes:
    return json.dumps(
        {"dataset": dataset, "tokens": tokens, "content_sha256": digest}, indent=2, sort_keys=True
    ).encode()


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def check_tokens(folder: Path) -> None:
    """The tokens in a dataset's path must equal the tokens in its manifest."""
    manifest = read_manifest(folder)
    path_tokens = tokens_from_path(folder)
    for key, value in manifest["tokens"].items():
        if path_tokens.get(key) != str(value):
            raise Seg1BError(
                Code.E_TOKEN_MISMATCH,
                f"path says {key}={path_tokens.get(key)}, manifest says {value}",
                file=folder / MANIFEST,
                key=key,
            )


def seal_and_commit(tmp: Path, final: Path, dataset: str, tokens: dict[str, object]) -> Path:
    """Seal a staged folder with its manifest and atomically publish it."""
    try:
        digest = tree_digest(tmp)
        (tmp / MANIFEST).write_bytes(_manifest(tokens, digest, dataset))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, final, digest)
    return final


def _commit(tmp: Path, final: Path, digest: str) -> None:
    if final.exists():
        existing = read_manifest(final)["content_sha256"] if (final / MANIFEST).is_file() else None
        shutil.rmtree(tmp, ignore_errors=True)
        if existing != digest:
            raise Seg1BError(
                Code.E_PUBLISH_CONFLICT, "dataset already published with different bytes (write-once)", file=final
            )
        return
    try:
        os.rename(tmp, final)
    except OSError:
        # Another writer won the race: same rule as above.
        shutil.rmtree(tmp, ignore_errors=True)
        if read_manifest(final)["content_sha256"] != digest:
            raise Seg1BError(
                Code.E_PUBLISH_CONFLICT, "dataset already published with different bytes (write-once)", file=final
            ) from None


def republish(source: Path, final: Path, dataset: str, tokens: dict[str, object]) -> Path:
    """Publish the bytes of an already-published dataset under new tokens (hard links)."""
    if source.resolve() == final.resolve():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = stage_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    digest = read_manifest(source)["content_sha256"]
    try:
        for path in sorted(source.rglob("*")):
            rel = path.relative_to(source)
            if path.is_dir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif rel.as_posix() != MANIFEST:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, tmp / rel)
                except OSError:
                    shutil.copy2(path, tmp / rel)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / MANIFEST).write_bytes(_manifest(tokens, digest, dataset))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _commit(tmp, final, digest)
    return final


def _plain(value: object) -> object:
    """numpy scalars as Python numbers; anything else (paths) as text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


@contextlib.contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling to write ``path`` into; on success it replaces ``path``
    whole (one rename), else it is removed. Readers never see half a file, and two writers
    of the same bytes (a lost worker still finishing a task and its re-run) leave one copy."""
    tmp = stage_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    with replaced(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, payload: object) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=_plain) + "\n")
