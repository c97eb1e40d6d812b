"""What a state's orchestration wrapper receives from the runner."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seg1b_dask.core.grid import Grid
from seg1b_dask.engine.execution import Execution
from seg1b_dask.errors import Code, InternalError
from seg1b_dask.io.lineage import Tokens
from seg1b_dask.policies.bundle import PolicyBundle


@dataclass(frozen=True)
class GateResult:
    """What S0's verification of the 1A bundle established: the run's lineage tokens."""

    manifest_fingerprint: str
    upstream_flag: str
    sealed_inputs: list[dict[str, str]]
    n_outlets: int


@dataclass(frozen=True)
class StateContext:
    tokens: Tokens
    policies: PolicyBundle
    grid: Grid
    execution: Execution
    inputs: dict[str, Path]  # dataset name -> published folder
    upstream: Path | None  # the verified 1A bundle, for a state that declares it reads it
    gate: GateResult
    baseline_nn_ratio: float | None = None  # the seed's pinned baseline (S9 grades nn_contraction against it)

    @property
    def upstream_bundle(self) -> Path:
        """The 1A bundle, for a state registered with ``reads_upstream``."""
        if self.upstream is None:
            raise InternalError(Code.E_INTERNAL, "a state read the 1A bundle without declaring it in the registry")
        return self.upstream

    @property
    def seed(self) -> int:
        return self.tokens.seed
