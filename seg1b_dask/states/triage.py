"""What to retune when a gate family fails, worded for a bundle's own policy modes: the
families a mode owns come from its ``advice`` (through each state's ``MODES``), the rest
from the grading's mode-free map."""

from __future__ import annotations

from seg1b_dask.grading.gates import TRIAGE
from seg1b_dask.policies.bundle import PolicyBundle
from seg1b_dask.states.s2_tile_weights.modes import mode_of as s2_mode
from seg1b_dask.states.s4_alloc_plan.modes import mode_of as s4_mode
from seg1b_dask.states.s6_jitter.modes import mode_of as s6_mode


def triage_hints(bundle: PolicyBundle) -> dict[str, str]:
    """The triage words of every gate family for ``bundle``."""
    hints = dict(TRIAGE)
    hints.update(s2_mode(bundle.s2_tile_weights.tile_weights).advice)
    hints.update(s4_mode(bundle.s4_alloc_plan.country_allocation).advice)
    hints.update(s6_mode(bundle.s6_jitter.jitter).advice)
    if bundle.s4_alloc_plan.tile_allocation.tie_break != "keyed":
        hints["collapse"] = (
            "collapse: s4_alloc_plan tile_allocation.tie_break tile_id lays stripes; use keyed or method systematic"
        )
    return hints
