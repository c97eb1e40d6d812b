"""S2's policy modes by name: every dispatch on ``tile_weights.mode`` goes through ``MODES``."""

from __future__ import annotations

from seg1b_dask.policies.states import S2BlendV2, S2Legacy
from seg1b_dask.states.s2_tile_weights.blend_v2 import BlendV2
from seg1b_dask.states.s2_tile_weights.contract import TileWeightMode
from seg1b_dask.states.s2_tile_weights.legacy import Legacy

MODES: dict[str, type[Legacy] | type[BlendV2]] = {"legacy": Legacy, "blend_v2": BlendV2}


def mode_of(policy: S2Legacy | S2BlendV2) -> TileWeightMode:
    """The mode that runs ``policy``."""
    return MODES[policy.mode](policy)  # type: ignore[arg-type]  # the table pairs each name with its policy
