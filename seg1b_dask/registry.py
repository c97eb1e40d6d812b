"""The one declaration of the state chain: what each state reads, writes and is governed
by. The rerun matrix, cache keys and the run graph are derived from it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from types import ModuleType

from .lineage import Scope


@dataclass(frozen=True)
class StateSpec:
    id: str
    name: str
    module: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    policies: tuple[str, ...]
    seeded: bool
    graded: bool = False  # grades against the seed's pinned baseline (its NN ratio joins the cache key)

    def load(self) -> ModuleType:
        return import_module(f"seg1b_dask.states.{self.module}")


DATASETS: dict[str, Scope] = {
    "s0_gate_receipt": "plan",
    "tile_grid": "global",
    "tile_weights": "global",
    "country_mass": "global",
    "s3_requirements": "plan",
    "s4_alloc_plan": "plan",
    "site_lineage": "plan",
    "s5_site_tile_assignment": "plan",
    "s6_site_jitter": "plan",
    "s7_site_synthesis": "plan",
    "site_locations": "egress",
    "validation_bundle": "plan",
}

STATES: tuple[StateSpec, ...] = (
    StateSpec("S0", "gate", "s0_gate", (), ("s0_gate_receipt",), (), True),
    StateSpec("S1", "tiles", "s1_tiles", (), ("tile_grid",), ("grid",), False),
    StateSpec(
        "S2",
        "tile_weights",
        "s2_tile_weights",
        ("tile_grid",),
        ("tile_weights", "country_mass"),
        ("s2_tile_weights",),
        False,
    ),
    StateSpec(
        "S3",
        "requirements",
        "s3_requirements",
        ("s0_gate_receipt", "tile_grid"),
        ("s3_requirements",),
        ("s3_requirements",),
        True,
    ),
    StateSpec(
        "S4",
        "alloc_plan",
        "s4_alloc_plan",
        ("s3_requirements", "tile_grid", "tile_weights", "country_mass"),
        ("s4_alloc_plan", "site_lineage"),
        ("s4_alloc_plan",),
        True,
    ),
    StateSpec("S5", "assignment", "s5_assignment", ("s4_alloc_plan",), ("s5_site_tile_assignment",), (), True),
    StateSpec("S6", "jitter", "s6_jitter", ("s5_site_tile_assignment",), ("s6_site_jitter",), ("s6_jitter",), True),
    StateSpec(
        "S7",
        "synthesis",
        "s7_synthesis",
        ("s5_site_tile_assignment", "s6_site_jitter"),
        ("s7_site_synthesis",),
        (),
        True,
    ),
    StateSpec("S8", "egress", "s8_egress", ("s7_site_synthesis",), ("site_locations",), ("s8_egress",), True),
    StateSpec(
        "S9",
        "validation",
        "s9_validation",
        ("site_locations", "s3_requirements", "s4_alloc_plan", "tile_grid"),
        ("validation_bundle",),
        ("s9_validation", "gates"),
        True,
        graded=True,
    ),
)
BY_ID = {s.id: s for s in STATES}


def first_dirty_state(changed_policies: set[str]) -> str | None:
    """The earliest state governed by a changed policy file: it and everything after it
    rerun; everything before it is reused from the cache."""
    for spec in STATES:
        if changed_policies & set(spec.policies):
            return spec.id
    return None


def rerun_matrix() -> dict[str, list[str]]:
    """For each policy file, the states a change to it reruns (derived, never written)."""
    ids = [s.id for s in STATES]
    matrix = {}
    for spec in STATES:
        for policy in spec.policies:
            matrix[policy] = ids[ids.index(spec.id) :]
    return matrix
