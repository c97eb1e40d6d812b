"""S4(a) ``legacy``: every outlet stays in its 1A country (the old engine's posture)."""

from __future__ import annotations

from .remass import Allocation, Pairs, footprint, no_moves


def allocate(pairs: Pairs) -> Allocation:
    """The identity: 1A's counts, no moves."""
    stats = {"relocated_share": 0.0, **footprint(pairs.merchant, pairs.country, pairs.n_sites, pairs.home, "1b")}
    return Allocation(pairs.merchant, pairs.country, pairs.n_sites, pairs.n_sites, no_moves(), stats)
