"""The one declaration of the state chain: each state's function, what it reads, writes and
is governed by. The run loop, the rerun matrix, the cache keys (with a digest of the code
each state runs) and the README's state table are all derived from it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

from seg1b_dask.engine.context import StateContext
from seg1b_dask.io.lineage import Scope
from seg1b_dask.io.package import PACKAGE_DIR, files_digest
from seg1b_dask.states import (
    s0_gate,
    s1_tiles,
    s2_tile_weights,
    s3_requirements,
    s4_alloc_plan,
    s5_assignment,
    s6_jitter,
    s7_synthesis,
    s8_egress,
    s9_validation,
)


class StateFn(Protocol):
    """A state: read the declared inputs from ``ctx.inputs``, write into the staged folders
    ``out`` (one per dataset it writes), return its stats."""

    def __call__(self, ctx: StateContext, out: dict[str, Path]) -> dict[str, object]: ...


@dataclass(frozen=True)
class StateSpec:
    id: str
    name: str
    run: StateFn
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    policies: tuple[str, ...]
    seeded: bool
    graded: bool = False  # grades against the seed's pinned baseline (its NN ratio joins the cache key)
    cached: bool = True  # S0 always verifies the upstream bundle afresh
    seals_tokens: bool = False  # its bytes carry manifest_fingerprint (S9's sealed index), so the key does too
    reads_upstream: bool = False  # reads the verified 1A bundle itself (``ctx.upstream``)

    @property
    def module(self) -> str:
        return self.run.__module__


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
    StateSpec("S0", "gate", s0_gate.run, (), ("s0_gate_receipt",), (), True, cached=False, reads_upstream=True),
    StateSpec("S1", "tiles", s1_tiles.run, (), ("tile_grid",), ("grid",), False),
    StateSpec(
        "S2",
        "tile_weights",
        s2_tile_weights.run,
        ("tile_grid",),
        ("tile_weights", "country_mass"),
        ("s2_tile_weights",),
        False,
    ),
    StateSpec(
        "S3",
        "requirements",
        s3_requirements.run,
        ("s0_gate_receipt", "tile_grid"),
        ("s3_requirements",),
        ("s3_requirements",),
        True,
        reads_upstream=True,
    ),
    StateSpec(
        "S4",
        "alloc_plan",
        s4_alloc_plan.run,
        ("s3_requirements", "tile_grid", "tile_weights", "country_mass"),
        ("s4_alloc_plan", "site_lineage"),
        ("s4_alloc_plan",),
        True,
    ),
    StateSpec("S5", "assignment", s5_assignment.run, ("s4_alloc_plan",), ("s5_site_tile_assignment",), (), True),
    StateSpec(
        "S6",
        "jitter",
        s6_jitter.run,
        ("s5_site_tile_assignment", "tile_grid", "tile_weights"),
        ("s6_site_jitter",),
        ("s6_jitter",),
        True,
    ),
    StateSpec(
        "S7",
        "synthesis",
        s7_synthesis.run,
        ("s5_site_tile_assignment", "s6_site_jitter"),
        ("s7_site_synthesis",),
        (),
        True,
    ),
    StateSpec("S8", "egress", s8_egress.run, ("s7_site_synthesis",), ("site_locations",), ("s8_egress",), True),
    StateSpec(
        "S9",
        "validation",
        s9_validation.run,
        ("site_locations", "s3_requirements", "s4_alloc_plan", "tile_grid", "tile_weights"),
        ("validation_bundle",),
        ("s9_validation", "gates"),
        True,
        graded=True,
        seals_tokens=True,
    ),
)
BY_ID = {s.id: s for s in STATES}
WRITER = {dataset: s.id for s in STATES for dataset in s.writes}  # dataset -> the state that writes it


def reruns(changed_policies: set[str]) -> list[str]:
    """The states a change to ``changed_policies`` reruns, in chain order: the states those
    files govern and every state that reads, directly or through others, what they write
    (the read graph the cache keys chain). Every other state keeps its cache key, so reusing
    it is byte-identical to rerunning it: it reads nothing that changed."""
    dirty: set[str] = set()
    for spec in STATES:  # chain order: a state's writers come before it
        if changed_policies & set(spec.policies) or any(WRITER[d] in dirty for d in spec.reads):
            dirty.add(spec.id)
    return [s.id for s in STATES if s.id in dirty]


def first_dirty_state(changed_policies: set[str]) -> str | None:
    """The earliest state a change to ``changed_policies`` reruns."""
    dirty = reruns(changed_policies)
    return dirty[0] if dirty else None


def rerun_matrix() -> dict[str, list[str]]:
    """For each policy file, the states a change to it reruns (derived, never written)."""
    return {policy: reruns({policy}) for spec in STATES for policy in spec.policies}


def _module_file(name: str) -> Path | None:
    """The source file of a ``seg1b_dask`` module (a package's ``__init__.py``)."""
    if name == "seg1b_dask":
        return PACKAGE_DIR / "__init__.py"
    if not name.startswith("seg1b_dask."):
        return None
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("seg1b_dask", *parts))


def _imports(path: Path) -> Iterator[str]:
    """The ``seg1b_dask`` modules a file imports (absolute or relative, at any depth)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


@cache
def code_files(module: str) -> tuple[Path, ...]:
    """Every package source file ``module`` runs: itself and what it imports, transitively."""
    seen: dict[str, Path] = {}
    stack = [module]
    while stack:
        name = stack.pop()
        path = _module_file(name)
        if path is None or name in seen:
            continue
        seen[name] = path
        stack.extend(_imports(path))
    return tuple(sorted(set(seen.values())))


@cache
def state_code_digest(spec_id: str) -> str:
    """Digest of the code a state runs: an edit elsewhere (the scorer, the CLI, another
    state) leaves its cached results valid."""
    files = code_files(BY_ID[spec_id].module)
    return files_digest(files)


def state_table() -> str:
    """The README's table of states, generated from the registry."""
    rows = ["| state | function | reads | writes | policy files |", "|---|---|---|---|---|"]
    for s in STATES:
        reads = [*(["the 1A bundle"] if s.reads_upstream else []), *s.reads] or ["reference data only"]
        rows.append(
            f"| {s.id} {s.name} | `{s.module}.run` | {', '.join(reads)} | {', '.join(s.writes)} "
            f"| {', '.join(f'{p}.yaml' for p in s.policies) or '–'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":  # the README's state table: python -m seg1b_dask.chain.registry
    print(state_table())
