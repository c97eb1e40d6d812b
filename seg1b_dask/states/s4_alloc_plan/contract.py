"""What an S4(a) country-allocation mode does, and the tables it reads and writes: S4's
wiring and ``seg1b feasibility`` call a mode without knowing which it is."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core import metrics
from seg1b_dask.model.mass import CountryVector
from seg1b_dask.states.s4_alloc_plan.moves import Moves

HomeFloor = Callable[[int], NDArray[np.int64]]  # home_sites_min -> per country: outlets its home merchants keep


@dataclass(frozen=True)
class Pairs:
    """1A's (merchant, country) counts, sorted by merchant then country index; ``home`` is
    the merchant's home country index on every row."""

    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    n_sites: NDArray[np.int64]
    home: NDArray[np.int64]


@dataclass(frozen=True)
class Allocation:
    merchant: NDArray[np.uint64]
    country: NDArray[np.int64]
    n_sites: NDArray[np.int64]
    kept: NDArray[np.int64]  # per 1A pair: outlets kept in the 1A country (site_order 1..kept)
    moves: Moves
    stats: dict[str, Any]


def footprint(
    merchant: NDArray[np.uint64],
    country: NDArray[np.int64],
    n_sites: NDArray[np.int64],
    home: NDArray[np.int64],
    tag: str,
    max_countries: int,
) -> dict[str, float]:
    """Merchant footprint figures (``metrics.merchant_footprint``, against 1A's own largest
    footprint ``max_countries``) and the share of outlets outside the home country,
    suffixed ``_1a`` or ``_1b``."""
    live = n_sites > 0
    figures = metrics.merchant_footprint(merchant[live], country[live], max_countries)
    figures["outside_home_share"] = round(
        float(n_sites[live & (country != home)].sum() / max(int(n_sites.sum()), 1)), 6
    )
    return {f"{k}_{tag}": v for k, v in figures.items()}


class CountryAllocationMode(Protocol):
    """One S4(a) policy mode: how many outlets each country holds, and which move."""

    governed: ClassVar[bool]  # the remediation posture: the mode governs the realism it owns
    advice: ClassVar[dict[str, str]]  # per gate family it owns: the knobs that move it
    relocates: ClassVar[bool]  # whether outlets can leave their 1A country

    def country_counts(
        self, a_count: NDArray[np.int64], home_floor: HomeFloor, vector: CountryVector
    ) -> NDArray[np.int64]:
        """Per country: the outlets it holds after S4(a) (``seg1b feasibility`` predicts with it)."""
        ...

    def allocate(self, pairs: Pairs, vector: CountryVector, seed: int) -> Allocation:
        """1A's pairs allocated to countries, with every outlet's move."""
        ...
