"""Segment 1A: the stand-in bundle generator and the bundle reader (DESIGN §10).

Real 1A bundles are not available, so ``seg1b upstream synth`` writes a proper one that
reproduces the old baseline posture (FACTS.md §3): for seed 42 the country totals are
exactly the published ones; other seeds vary plausibly around them. Merchant sizes and
multi-country structure follow the published profile; per-country totals are matched
exactly by iterative proportional fitting and per-country integer rounding.

``--scale N`` writes about N outlets for benchmarking at scale: independent blocks of
merchants, each drawn from the same profile with its own jittered country totals, its own
sizes, country sets and merchant ids (more merchants like these, never copies).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.hashing import canonical_json, seal_bundle, sha256_hex

GENERATOR_VERSION = "1A-standin/1"
CATALOGUE = "outlet_catalogue/part-00000.parquet"
CANDIDATES = "s3_candidate_set/part-00000.parquet"

# FACTS.md §3: the 20 largest countries of the seed-42 catalogue, then the 57 others in
# rank order with the published geometric fall-off (x0.913 per rank, 394 down to 2).
TOP_COUNTRIES = {
    "DE": 4269, "FR": 3131, "GB": 2915, "DK": 1977, "BM": 1777, "CH": 1727, "IT": 1568,
    "AU": 1309, "ES": 1285, "NO": 1167, "NL": 1019, "SG": 678, "HK": 643, "US": 599,
    "QA": 537, "MO": 493, "IS": 481, "AE": 413, "BE": 412, "IL": 395,
}  # fmt: skip
TAIL_COUNTRIES = (
    "CA", "SE", "PT", "JP", "AR", "FI", "CN", "MX", "SA", "NZ", "OM", "MC", "AT", "PL",
    "BR", "IE", "KZ", "LU", "UY", "ID", "CZ", "GR", "TR", "IN", "KR", "EC", "UZ", "MN",
    "TH", "MY", "PH", "GH", "CY", "MT", "EG", "LR", "CD", "MA", "NG", "KE", "CO", "PE",
    "VN", "HU", "RO", "CL", "ZA", "LI", "TW", "KW", "BH", "JO", "LB", "PA", "CR", "SC", "MU",
)  # fmt: skip
TAIL_COUNTS = (
    394, 359, 327, 299, 273, 249, 227, 207, 189, 172, 157, 140, 132, 120, 110, 100, 92, 84,
    76, 70, 64, 58, 53, 47, 43, 39, 36, 33, 30, 27, 25, 22, 20, 18, 17, 15, 14, 12, 11, 10,
    9, 9, 9, 8, 7, 6, 6, 5, 5, 5, 4, 4, 3, 3, 3, 3, 2,
)  # fmt: skip
N_MERCHANTS = 1238
N_PAIRS = 2597
MAX_MERCHANT = 2546
MULTI_SHARE = 0.374
# Share of each merchant size band in all outlets (top 1 %, 1-5 %, 5-10 %, rest).
BAND_SHARES = (0.237, 0.377 - 0.237, 0.461 - 0.377, 1.0 - 0.461)
HOME_SHARE_MULTI = 0.36  # home country's share of a multi-country merchant's outlets


@dataclass(frozen=True)
class Catalogue:
    """The 1A outlet structure: one row per (merchant, country) pair."""

    merchant_id: NDArray[np.uint64]
    home_country_iso: NDArray[np.str_]
    legal_country_iso: NDArray[np.str_]
    n_outlets: NDArray[np.int64]


def seed42_country_totals() -> dict[str, int]:
    return {**TOP_COUNTRIES, **dict(zip(TAIL_COUNTRIES, TAIL_COUNTS, strict=True))}


def _rng(seed: int, purpose: str, block: int | None = None) -> np.random.Generator:
    scope = f"{seed}" if block is None else f"{seed}|block{block}"
    digest = hashlib.sha256(f"{GENERATOR_VERSION}|{scope}|{purpose}".encode()).digest()
    return np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))


def _largest_remainder(quota: NDArray[np.float64], total: int) -> NDArray[np.int64]:
    base = np.floor(quota).astype(np.int64)
    short = total - int(base.sum())
    order = np.lexsort((np.arange(len(quota)), -(quota - base)))
    base[order[:short]] += 1
    return base


def country_totals(seed: int, block: int | None = None) -> dict[str, int]:
    """Seed 42: FACTS totals exactly. Other seeds and scale blocks: the same countries, totals
    jittered."""
    totals = seed42_country_totals()
    if seed == 42 and block is None:
        return totals
    rng = _rng(seed, "country_totals", block)
    iso = sorted(totals)
    base = np.asarray([totals[c] for c in iso], dtype=np.float64)
    jittered = base * np.exp(rng.normal(0.0, 0.15, size=len(base)))
    grand = int(round(sum(totals.values()) * float(np.exp(rng.normal(0.0, 0.03)))))
    counts = (
        np.maximum(_largest_remainder(jittered / jittered.sum() * (grand - 2 * len(iso)), grand - 2 * len(iso)), 0) + 2
    )
    return dict(zip(iso, counts.tolist(), strict=True))


def _merchant_sizes(rng: np.random.Generator, n_outlets: int) -> NDArray[np.float64]:
    """Target outlet counts per merchant (descending) following the published bands."""
    n = N_MERCHANTS
    bands = [int(np.ceil(n * f)) for f in (0.01, 0.05, 0.10)]
    sizes = np.empty(n)
    # Top 1 %: the largest merchant, then a geometric run down to ~p99 (161).
    top = bands[0]
    run = 161.0 * (MAX_MERCHANT / 161.0) ** (np.linspace(1, 0, top)[1:] ** 1.6) * np.exp(rng.normal(0, 0.05, top - 1))
    run = run / run.sum() * (BAND_SHARES[0] * n_outlets - MAX_MERCHANT)
    sizes[:top] = np.concatenate([[MAX_MERCHANT], np.sort(run)[::-1]])
    lo = top
    for band_end, share, (hi_v, lo_v) in zip(bands[1:], BAND_SHARES[1:3], ((160.0, 50.0), (50.0, 36.0)), strict=True):
        k = band_end - lo
        vals = np.sort(np.exp(rng.uniform(np.log(lo_v), np.log(hi_v), k)))[::-1]
        sizes[lo:band_end] = vals / vals.sum() * share * n_outlets
        lo = band_end
    body = np.clip(np.exp(rng.normal(np.log(17.0), 0.7, n - lo)), 2.0, 36.0)
    sizes[lo:] = np.sort(body / body.sum() * BAND_SHARES[3] * n_outlets)[::-1]
    return np.maximum(sizes, 2.0)


def _countries_per_merchant(rng: np.random.Generator, sizes: NDArray[np.float64]) -> NDArray[np.int64]:
    n = len(sizes)
    n_multi = int(round(MULTI_SHARE * n))
    weights = np.sqrt(sizes)
    multi = rng.choice(n, size=n_multi, replace=False, p=weights / weights.sum())
    k = np.ones(n, dtype=np.int64)
    draws = rng.choice(np.arange(2, 12), size=n_multi, p=[0.30, 0.22, 0.18, 0.12, 0.07, 0.04, 0.03, 0.02, 0.01, 0.01])
    # Larger merchants span more countries.
    k[multi[np.argsort(-sizes[multi], kind="stable")]] = np.sort(draws)[::-1]
    k[multi[np.argmax(sizes[multi])]] = 11
    excess = int(k.sum()) - N_PAIRS
    step = -1 if excess > 0 else 1
    order = multi[rng.permutation(n_multi)]
    i = 0
    while excess != 0:
        m = order[i % n_multi]
        if 2 <= k[m] + step <= 11 and k[m] != 11:
            k[m] += step
            excess += step
        i += 1
    return k


ID_BITS = 52
_ID_MASK = (1 << ID_BITS) - 1
_BLOCK_SHIFT = 11  # a block holds N_MERCHANTS < 2**11 merchants


def _merchant_ids(seed: int, block: int | None, n: int) -> NDArray[np.uint64]:
    """52-bit merchant ids. The plain stand-in hashes (seed, i); a scaled one maps (block, i)
    through a bijection of the 52-bit integers keyed by the seed, so no two merchants of a
    scaled bundle ever share an id, at any number of blocks."""
    if block is None:
        digests = b"".join(hashlib.sha256(f"{seed}|merchant|{i}".encode()).digest()[:8] for i in range(n))
        return np.frombuffer(digests, dtype="<u8") >> np.uint64(64 - ID_BITS)
    key = int.from_bytes(hashlib.sha256(f"{GENERATOR_VERSION}|{seed}|ids".encode()).digest()[:8], "little")
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):  # xor, odd multiplications and xor-shifts mod 2**52 are each invertible
        x = ((block << _BLOCK_SHIFT) | i) ^ (key & _ID_MASK)
        for odd in (0x9E3779B97F4A7, 0xC2B2AE3D27D4F):
            x = (x * odd) & _ID_MASK
            x ^= x >> 26
        out[i] = x
    return out


def synthesize(seed: int, block: int | None = None) -> Catalogue:
    """Build the pair table: exact country totals, every merchant >= 2 outlets. ``block``
    draws one more independent block of merchants for a scaled bundle."""
    totals = country_totals(seed, block)
    iso = np.asarray(sorted(totals), dtype="U2")
    target = np.asarray([totals[c] for c in iso], dtype=np.int64)
    n_outlets = int(target.sum())
    rng = _rng(seed, "merchants", block)
    sizes = _merchant_sizes(rng, n_outlets)
    k = _countries_per_merchant(rng, sizes)
    n, c = len(sizes), len(iso)

    # Country sets: home drawn by mass, the rest without replacement; a country can hold at
    # most as many merchants as it has outlets, and every country is used at least once.
    capacity = target.copy()
    member = np.zeros((n, c), dtype=bool)
    home = np.empty(n, dtype=np.int64)
    for m in np.argsort(-sizes, kind="stable"):
        weight = np.where(capacity > 0, target.astype(np.float64), 0.0)
        chosen = rng.choice(c, size=int(k[m]), replace=False, p=weight / weight.sum())
        home[m] = chosen[0]
        member[m, chosen] = True
        capacity[chosen] -= 1
    for unused in np.flatnonzero(~member.any(axis=0)):
        m = int(rng.choice(np.flatnonzero((k >= 2) & (k < 11) & ~member[:, unused])))
        member[m, unused] = True
        k[m] += 1
    # Those additions overshoot the pair count: drop foreign pairs in shared countries.
    while int(member.sum()) > N_PAIRS:
        m = int(rng.choice(np.flatnonzero(k > 2)))
        shared = np.flatnonzero(member[m] & (member.sum(axis=0) > 1))
        shared = shared[shared != home[m]]
        if len(shared):
            member[m, int(rng.choice(shared))] = False
            k[m] -= 1
    # Fractional start: home holds a fixed share of a multi-country merchant.
    multi = k > 1
    foreign = member.copy()
    foreign[np.arange(n), home] = False
    share = np.where(foreign, (1 - HOME_SHARE_MULTI) / np.maximum(k - 1, 1)[:, None], 0.0)
    share[np.arange(n), home] = np.where(multi, HOME_SHARE_MULTI, 1.0)
    x = share * (sizes / sizes.sum() * n_outlets)[:, None]
    row_target = sizes / sizes.sum() * n_outlets
    for _ in range(200):
        x *= (target / np.maximum(x.sum(axis=0), 1e-12))[None, :]
        x *= (row_target / np.maximum(x.sum(axis=1), 1e-12))[:, None]
    x *= (target / x.sum(axis=0))[None, :]

    counts = np.zeros((n, c), dtype=np.int64)
    for col in range(c):
        rows = np.flatnonzero(member[:, col])
        quota = x[rows, col]
        extra = target[col] - len(rows)
        counts[rows, col] = 1 + _largest_remainder(
            np.maximum(quota - 1, 0) / max(np.maximum(quota - 1, 0).sum(), 1e-12) * extra, extra
        )
    # Every merchant needs >= 2 outlets: take one from the largest pair of the same country of
    # a merchant that keeps >= 2 and never its last outlet at home; when no merchant there can
    # give, from the largest such pair anywhere (the taker then gains that country). Country
    # totals never move.
    for m in np.flatnonzero(counts.sum(axis=1) < 2):
        can_give = (counts.sum(axis=1) > 2)[:, None] & (counts > 0)
        can_give[np.arange(n), home] &= counts[np.arange(n), home] > 1
        country = int(np.flatnonzero(counts[m])[0])
        if not can_give[:, country].any():
            country = int(np.argmax(np.where(can_give, counts, 0).max(axis=0)))
        donor = int(np.argmax(np.where(can_give[:, country], counts[:, country], 0)))
        counts[donor, country] -= 1
        counts[m, country] += 1
    if not ((counts.sum(axis=0) == target).all() and counts.min() >= 0 and counts.sum(axis=1).min() >= 2):
        raise Seg1BError(Code.E_INTERNAL, f"stand-in counts or country totals drifted for seed {seed}, block {block}")
    if counts[np.arange(n), home].min() < 1:
        raise Seg1BError(Code.E_INTERNAL, f"a stand-in merchant lost its home country: seed {seed}, block {block}")
    ids = np.sort(_merchant_ids(seed, block, n))
    mm, cc = np.nonzero(counts)
    return Catalogue(
        merchant_id=ids[mm].astype(np.uint64),
        home_country_iso=iso[home[mm]],
        legal_country_iso=iso[cc],
        n_outlets=counts[mm, cc],
    )


def catalogue_rows(cat: Catalogue) -> pa.Table:
    """Expand pairs to one row per outlet with ``site_order`` 1..n."""
    n = cat.n_outlets
    pair = pa.array(np.repeat(np.arange(len(n)), n))
    starts = np.cumsum(n) - n
    site_order = np.arange(int(n.sum())) - np.repeat(starts, n) + 1
    return pa.table(
        {
            "merchant_id": pa.array(cat.merchant_id, pa.uint64()).take(pair),
            "home_country_iso": pa.array(cat.home_country_iso.tolist(), pa.string()).take(pair),
            "legal_country_iso": pa.array(cat.legal_country_iso.tolist(), pa.string()).take(pair),
            "site_order": pa.array(site_order.astype(np.int32), pa.int32()),
            "final_country_outlet_count": pa.array(n[pair].astype(np.int32), pa.int32()),
        }
    )


def candidate_rows(cat: Catalogue, seed: int, block: int | None = None) -> pa.Table:
    """Candidate countries per merchant: home first (rank 0), then its other legal countries."""
    rng = _rng(seed, "candidates", block)
    merchant, first = np.unique(cat.merchant_id, return_index=True)
    rows: dict[str, list] = {"merchant_id": [], "country_iso": [], "candidate_rank": [], "is_home": []}
    all_iso = np.unique(cat.legal_country_iso)
    for m, f in zip(merchant, first, strict=True):
        mask = cat.merchant_id == m
        homec = cat.home_country_iso[f]
        legal = [homec] + sorted(set(cat.legal_country_iso[mask].tolist()) - {homec})
        extra = [c for c in rng.permutation(all_iso)[:3].tolist() if c not in legal]
        for rank, country in enumerate(legal + extra):
            rows["merchant_id"].append(int(m))
            rows["country_iso"].append(country)
            rows["candidate_rank"].append(rank)
            rows["is_home"].append(rank == 0)
    return pa.table(
        {
            "merchant_id": pa.array(rows["merchant_id"], pa.uint64()),
            "country_iso": pa.array(rows["country_iso"], pa.string()),
            "candidate_rank": pa.array(rows["candidate_rank"], pa.int32()),
            "is_home": pa.array(rows["is_home"], pa.bool_()),
        }
    )


def scale_blocks(seed: int, scale: int) -> int:
    """Blocks of merchants that make about ``scale`` outlets (each block ≈ one stand-in)."""
    return max(1, round(scale / sum(country_totals(seed).values())))


def write_bundle(seed: int, out: Path, scale: int | None = None, on_block: Callable[[int], None] | None = None) -> str:
    """Write a sealed 1A bundle for ``seed`` into the empty folder ``out``; return its flag hex.
    With ``scale``, about that many outlets from independent merchant blocks, written block by
    block (one Parquet row group each: memory stays that of one block)."""
    blocks: list[int | None] = [None] if scale is None else list(range(scale_blocks(seed, scale)))
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    done = 0
    try:
        for block in blocks:
            cat = synthesize(seed, block)
            for rel, table in ((CATALOGUE, catalogue_rows(cat)), (CANDIDATES, candidate_rows(cat, seed, block))):
                if rel not in writers:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    writers[rel] = pq.ParquetWriter(out / rel, table.schema, compression="zstd", store_schema=False)
                writers[rel].write_table(table)
            done += 1
            if on_block is not None:
                on_block(done)
    finally:
        for writer in writers.values():
            writer.close()
    scaled = {} if scale is None else {"scale_blocks": len(blocks)}
    fingerprint = sha256_hex(canonical_json({"generator": GENERATOR_VERSION, "seed": seed, **scaled}))
    meta = {"segment": "1A", "seed": seed, "manifest_fingerprint": fingerprint, "generator": GENERATOR_VERSION}
    return seal_bundle(out, {**meta, **scaled})
