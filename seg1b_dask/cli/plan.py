"""The remediation plan's commands: status, diagnose, lock, reopen, freeze."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from seg1b_dask.cli.app import (
    U64_MAX,
    _existing,
    _n,
    main,
    root_option,
)
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.runroot import RunRoot

phase_argument = click.argument("phase", type=click.Choice(["P1", "P2", "P3"]))


@main.command()
@root_option
@click.option(
    "--seed",
    default=None,
    type=click.IntRange(0, U64_MAX),
    help="the plan's seed (default: the seed its locks were made on, else 42)",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="also write it as JSON")
def status(root: Path, seed: int | None, json_out: Path | None) -> None:
    """Where the remediation plan stands: every DoD item of P0–P5 from the evidence under the
    run root (pass / fail / not yet, with the file that proves it) and the next action."""
    from seg1b_dask.plan.status import next_action, plan_seed
    from seg1b_dask.plan.status import status as plan_status

    if seed is None:
        locked = plan_seed(root) if root.is_dir() else None
        seed = 42 if locked is None else locked
    if root.is_dir():
        with RunRoot(root.resolve()).shared():
            phases = plan_status(root, seed)
    else:  # nothing run yet: every phase is still ahead
        phases = plan_status(root, seed)
    click.echo("\n".join(status_lines(root, seed, phases)))
    click.echo(f"\nnext: {next_action(phases)}")
    if json_out:
        from seg1b_dask.io.lineage import write_json

        write_json(json_out, {"seed": seed, "phases": [p.as_dict() for p in phases], "next": next_action(phases)})


STATUS_MARK = {"pass": "pass   ", "fail": "FAIL   ", "not yet": "not yet"}


def status_lines(root: Path, seed: int, phases: list[Any]) -> list[str]:
    from seg1b_dask.plan.phases import TITLES

    lines = [f"remediation plan, seed {seed}, run root {root.resolve()}"]
    for p in phases:
        about = f"  [{p.subject}]" if p.subject else ""
        state = f"waiting for {p.waiting}" if p.waiting else p.state
        lines += ["", f"{p.phase} {TITLES[p.phase]:<36} {state}{about}"]
        for item in p.items:
            mark = STATUS_MARK[item.status] if item.blocking or item.status == "pass" else "attempt"
            lines.append(f"  {mark}  {item.text}")
            lines.append(f"           {item.evidence}" + (f"  ({item.detail})" if item.detail else ""))
            if item.status != "pass" and item.action:
                lines.append(f"           → {item.action}")
    return lines


@main.command()
@click.argument("run_ref")
@root_option
@click.option("--grade", type=click.Choice(["B", "B+"]), default=None, help="the level (default: the run's target)")
def diagnose(run_ref: str, root: Path, grade: str | None) -> None:
    """At which state each failing gate of RUN_REF first goes wrong (S2 mass, S4 integer
    allocation, S8 sites), beside the seed's pinned baseline at the same states."""
    from seg1b_dask.io.discipline import run_dir
    from seg1b_dask.plan.diagnose import diagnose as do_diagnose

    with _existing(root).shared():
        found = do_diagnose(root, run_dir(root, run_ref), {"B": "B", "B+": "B_PLUS", None: None}[grade])
    click.echo("\n".join(diagnosis_lines(found)))


def diagnosis_lines(found: Any) -> list[str]:
    from seg1b_dask.grading.checkpoints import CHECKED, STAGES

    level = found.level.replace("_PLUS", "+")
    base = f"the pinned baseline {found.baseline_run_id}" if found.baseline_run_id else "no pinned baseline"
    lines = [
        f"diagnose {found.run_id} (seed {found.seed}, bundle {found.bundle}) at {level}, beside {base}",
        "  values at each stage: run (baseline); * marks a failing value; 1A is the input;",
        "  'sites only': measured on the published sites alone, so S8 says where it shows, not its cause",
        "",
        f"  {'gate':<34}{'limit':>10}" + "".join(f"{s:>22}" for s in STAGES) + "  first wrong",
    ]
    for t in found.traces:
        cells = []
        for s in STAGES:
            if s not in t.run:
                cells.append(f"{'–':>22}")
                continue
            value = f"{t.run[s]:.4f}{'*' if not t.passed[s] else ' '}"
            base_value = f"({t.baseline[s]:.4f}{'' if t.baseline_passed[s] else '*'})" if s in t.baseline else ""
            cells.append(f"{value + base_value:>22}")
        sign = "≤" if t.direction == "max" else "≥"
        where = t.first_wrong or "passes"
        if t.first_wrong and t.inherited:
            where += " (1A already)"
        elif t.first_wrong and t.sites_only:
            where += " (sites only)"
        lines.append(f"  {t.gate:<34}{sign + format(t.threshold, '.4f'):>10}" + "".join(cells) + f"  {where}")
    failing = found.failing
    lines.append("")
    if not failing:
        lines.append(f"  every {level} gate passes: nothing to diagnose")
        return lines
    for state in CHECKED:
        at = [t for t in failing if t.first_wrong == state]
        if at:
            lines.append(f"  first wrong at {state}: {', '.join(t.gate for t in at)}")
            for hint in dict.fromkeys(t.hint for t in at):
                lines.append(f"    → {hint}")
    return lines


@main.command()
@phase_argument
@click.argument("run_ref")
@root_option
def lock(phase: str, run_ref: str, root: Path) -> None:
    """Close PHASE (P1 = S2, P2 = S4, P3 = S6) at RUN_REF: refused unless the phase's DoD
    passes; reruns the seed from scratch to prove the bytes reproduce; writes the closure
    record (locks/PHASE.json)."""
    from seg1b_dask.io.discipline import run_dir
    from seg1b_dask.plan.closure import lock as close_phase

    with _existing(root).shared():
        record = close_phase(root, phase, run_dir(root, run_ref), Execution())
    click.echo(
        f"{phase} locked at run {record['run_id']}: {record['policy']} digest {record['policy_digest'][:16]}…; "
        f"reproduced from scratch ({record['dod'][-1]['detail']})"
    )
    click.echo(f"  closure record {RunRoot(root.resolve()).lock_record(phase)}")
    click.echo(f"  {record['freeze_statement']}")


@main.command()
@phase_argument
@root_option
@click.option("--reason", required=True, help="why the locked phase must change")
@click.option("--evidence", "evidence_ref", required=True, help="a run, made under the lock, that contradicts it")
def reopen(phase: str, root: Path, reason: str, evidence_ref: str) -> None:
    """Reopen a locked PHASE: needs a reason and a run, made under the lock, whose
    checkpoints show a gate first going wrong at the phase's state. Both are recorded."""
    from seg1b_dask.io.discipline import run_dir
    from seg1b_dask.plan.closure import reopen as reopen_phase

    with _existing(root).shared():
        record, cascaded = reopen_phase(root, phase, reason, run_dir(root, evidence_ref))
    last = record["reopened"][-1]
    click.echo(
        f"{phase} reopened on the evidence of run {last['evidence_run']} ({last['level'].replace('_PLUS', '+')}):"
    )
    for line in last["contradiction"]:
        click.echo(f"  {line}")
    if cascaded:
        click.echo(f"  reopened with it (built on {phase}): {', '.join(cascaded)}")


@main.command()
@click.argument("pack_ref")
@root_option
def freeze(pack_ref: str, root: Path) -> None:
    """P5: make the GREEN certification pack PACK_REF the authority: record the final lock
    set, point last_good at it, prune superseded runs. Refused while a run is in flight."""
    from seg1b_dask.io.discipline import pack_dir
    from seg1b_dask.plan.closure import freeze as freeze_pack

    record = freeze_pack(root, pack_dir(root, pack_ref))
    click.echo(f"frozen: pack {record['pack_id']} ({record['grade']}) is last_good")
    click.echo(f"  final lock set {RunRoot(root.resolve()).freeze_record(record['pack_id'])}")
    locks = ", ".join(record["phase_locks"]) or "none"
    click.echo(f"  {len(record['artifacts'])} pack files with their sha256; locks: {locks}")
    click.echo(f"  pruned {_n(len(record['pruned']), 'run')}; retained {_n(len(record['retained']), 'run')}:")
    for run_id, why in record["retained"].items():
        click.echo(f"    {run_id}: {', '.join(why)}")


# Everything after the command name goes to Dask's own command line, in order.
