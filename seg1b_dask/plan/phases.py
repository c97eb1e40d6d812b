"""The remediation plan's phases (seed plan §5–§7), in one table: what each is called, the
state whose policy it fixes (P1–P3, closed by ``lock``) and the checkpoint where that state's
shape is measured. The policy file of a phase is its state's, read from the registry."""

from __future__ import annotations

from dataclasses import dataclass

from seg1b_dask.chain.registry import BY_ID
from seg1b_dask.grading import checkpoints


@dataclass(frozen=True)
class Phase:
    id: str
    title: str
    tunes: str | None = None  # the state whose policy file the phase fixes
    checkpoint: str | None = None  # where that state's shape is measured (S6's shows on the sites, at S8)

    @property
    def policy(self) -> str | None:
        return BY_ID[self.tunes].policies[0] if self.tunes else None


PLAN = (
    Phase("P0", "baseline authority and checkpoints"),
    Phase("P1", "S2 macro-mass reshape", "S2", "S2"),
    Phase("P2", "S4 integer allocation", "S4", "S4"),
    Phase("P3", "S6 geometry", "S6", "S8"),
    Phase("P4", "integrated candidate"),
    Phase("P5", "certification and freeze"),
)
TITLES = {p.id: p.title for p in PLAN}
PHASES = {p.id: p.policy for p in PLAN if p.policy}  # the lockable phases and the policy file each fixes
TUNES = {p.id: p.tunes for p in PLAN if p.tunes}
CHECKPOINT_OF = {p.id: p.checkpoint for p in PLAN if p.checkpoint}
PHASE_OF = {policy: phase for phase, policy in PHASES.items()}
TARGET_POLICY = "s9_validation"  # the target grade: P4 raises it; every other file is someone's


# Gates measured on the sites only show at S8 whatever caused them; the phases whose files
# the triage map names for their family can be contradicted by them.
SITE_GATE_OWNERS = {
    "nn": ("P3",),  # S6's spreads
    "collapse": ("P2", "P3"),  # S4's tile allocation lays stripes, S6's spread hides or shows them
    "urban": ("P1", "P3"),  # S2's population basis, S6's spreads
    "bootstrap": ("P1", "P2"),  # concentration under resampling: S2's mass, S4's counts
}


def contradicts(trace: checkpoints.GateTrace) -> tuple[str, ...]:
    """The locked phases a failing gate contradicts: the state where it first goes wrong
    (S2 → P1, S4 → P2); on the sites only, the owners of its family."""
    if trace.first_wrong == "S8":
        return SITE_GATE_OWNERS.get(trace.family, ())
    return tuple(p for p, stage in CHECKPOINT_OF.items() if stage == trace.first_wrong)
