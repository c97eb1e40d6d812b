"""S6 ``uniform_v1`` (legacy): a uniform point of the cell for every attempt."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from seg1b_dask.core.grid import Grid
from seg1b_dask.policies.states import S6UniformV1
from seg1b_dask.states.s6_jitter.contract import Bounds, Proposer


def propose(
    sel: NDArray[np.intp], bounds: Bounds, u: NDArray[np.float64], v: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    west, south, east, north = bounds
    return west + u * (east - west), south + v * (north - south)


class UniformV1:
    governed: ClassVar[bool] = False
    advice: ClassVar[dict[str, str]] = {
        "nn": "NN tail: s6_jitter jitter.mode uniform_v1 has no tail control; switch to mixture_v3",
    }
    reads_expected_sites: ClassVar[bool] = False

    def __init__(self, policy: S6UniformV1) -> None:
        self.policy = policy
        self.max_attempts = policy.max_attempts

    def proposer(
        self,
        tile_id: NDArray[np.int64],
        expected_sites: NDArray[np.float64] | None,
        total_sites: int,
        key_fields: tuple[NDArray[np.uint64], ...],
        grid: Grid,
        key: np.uint64,
    ) -> Proposer:
        return propose
