"""Counter-based random draws keyed by content, never by task order (DESIGN §4).

Each draw is a pure function of (seed, namespace, key fields…, counter): a SplitMix64
finalizer chained over uint64 fields. Vectorized; the same site gets the same numbers in
any batch, on any worker, in any order.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import ArrayLike, NDArray

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def stream_key(seed: int, namespace: str) -> np.uint64:
    """A 64-bit key for one (seed, state namespace) stream."""
    digest = hashlib.sha256(f"{int(seed)}|{namespace}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def hash64(key: np.uint64, *fields: ArrayLike) -> NDArray[np.uint64]:
    """Hash a stream key with broadcastable integer fields into uint64 values."""
    arrays = [np.asarray(f).astype(np.uint64, copy=False) for f in fields]
    shape = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
    return extend(np.full(shape, key, dtype=np.uint64), *arrays)


def extend(prefix: NDArray[np.uint64], *fields: ArrayLike) -> NDArray[np.uint64]:
    """The chain of ``hash64`` continued: ``hash64(key, *a, *b) == extend(hash64(key, *a), *b)``,
    so draws that share their leading fields (a site's key, then an attempt) hash them once."""
    h = np.asarray(prefix, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for f in fields:
            a = np.asarray(f).astype(np.uint64, copy=False)
            h = _mix(h + _GOLDEN + _mix(a + _GOLDEN))
    return h


def unit(h: NDArray[np.uint64]) -> NDArray[np.float64]:
    """Uniform floats in [0, 1) with 53 bits of hashes."""
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform(key: np.uint64, *fields: ArrayLike) -> NDArray[np.float64]:
    """Uniform floats in [0, 1) with 53 bits, keyed by the fields."""
    return unit(hash64(key, *fields))


def country_code_int(iso2: ArrayLike) -> NDArray[np.uint64]:
    """Stable integer for an ISO alpha-2 code (two ASCII bytes), used as an RNG key field."""
    codes = np.ascontiguousarray(np.asarray(iso2, dtype="U2")).ravel()
    if (codes.view(np.uint32) > 0x7F).any():
        raise ValueError("ISO codes are ASCII")
    b = codes.view(np.uint32).reshape(-1, 2).astype(np.uint64)  # UTF-32 code points: ASCII bytes
    return (b[:, 0] << np.uint64(8)) | b[:, 1]


def country_code_str(code: ArrayLike) -> NDArray[np.str_]:
    """The inverse of ``country_code_int``."""
    c = np.asarray(code, dtype=np.uint64)
    pairs = np.column_stack([(c >> np.uint64(8)).astype(np.uint8), (c & np.uint64(0xFF)).astype(np.uint8)])
    return np.ascontiguousarray(pairs).view("S2").ravel().astype("U2")
