"""What a jitter mode does, so S6's placement loop calls it without knowing which it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid

Bounds = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
# (sites, their tiles' bounds, u, v) -> a proposal (lon, lat) inside each site's tile
Proposer = Callable[
    [NDArray[np.intp], Bounds, NDArray[np.float64], NDArray[np.float64]],
    tuple[NDArray[np.float64], NDArray[np.float64]],
]


class JitterMode(Protocol):
    """One S6 policy mode: proposals inside the tile, attempt after attempt."""

    governed: ClassVar[bool]  # the remediation posture: the mode governs the realism it owns
    advice: ClassVar[dict[str, str]]  # per gate family it owns: the knobs that move it
    reads_expected_sites: ClassVar[bool]  # whether it spreads by each tile's expected outlets (S2's weights)
    max_attempts: int

    def proposer(
        self,
        tile_id: NDArray[np.int64],
        expected_sites: NDArray[np.float64] | None,
        total_sites: int,
        key_fields: tuple[NDArray[np.uint64], ...],
        grid: Grid,
        key: np.uint64,
    ) -> Proposer:
        """The proposal function of a batch of sites (their tiles, keys and expected outlets)."""
        ...
