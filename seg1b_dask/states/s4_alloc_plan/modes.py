"""S4(a)'s policy modes by name: every dispatch on ``country_allocation.mode`` goes through ``MODES``."""

from __future__ import annotations

from seg1b_dask.policies.states import CountryAllocationLegacy, CountryAllocationRemass
from seg1b_dask.states.s4_alloc_plan.contract import CountryAllocationMode
from seg1b_dask.states.s4_alloc_plan.legacy import Legacy
from seg1b_dask.states.s4_alloc_plan.remass import Remass

MODES: dict[str, type[Legacy] | type[Remass]] = {"legacy": Legacy, "remass": Remass}


def mode_of(policy: CountryAllocationLegacy | CountryAllocationRemass) -> CountryAllocationMode:
    """The mode that runs ``policy``."""
    return MODES[policy.mode](policy)  # type: ignore[arg-type]  # the table pairs each name with its policy
