"""P5, certification and freeze: a pack GREEN on every required seed, closed by ``freeze``."""

from __future__ import annotations

from pathlib import Path

from seg1b_dask.grading import gates as grading
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.discipline import read_json, read_optional
from seg1b_dask.plan.evidence import Evidence
from seg1b_dask.plan.items import Item, fmt, scope_problems
from seg1b_dask.policies.bundle import sealed_bundle


def _relocated(pack: Path) -> str:
    """The price every grade is reported beside: the pack's range of ``relocated_share``."""
    shares = sorted(read_json(card)["fidelity"]["relocated_share"] for card in pack.glob("seeds/seed=*/scorecard.json"))
    return f"{fmt(shares[0])}–{fmt(shares[-1])}" if shares else "–"


def p5_items(ev: Evidence, pack: Path) -> list[Item]:
    from seg1b_dask.io.packs import pack_content_sha256

    grade = read_json(packs.grade_json(pack))
    info = read_json(packs.pack_json(pack))
    folder = ev.rel(pack)
    intact = info.get("content_sha256") == pack_content_sha256(pack)
    items = [
        Item(
            "the pack is intact (its content digest matches its files)",
            "pass" if intact else "fail",
            f"{folder}/pack.json",
            f"content sha256 {str(info.get('content_sha256'))[:16]}…",
            "certify again: a file of this pack changed after it was written",
        )
    ]
    base = ev.baseline_meta(ev.seed)
    required = sealed_bundle(base).gates.required_seeds if base else ()
    missing = sorted((set(required) - set(grade["seeds"])) | set(grade["missing_seeds"]))
    outcome = grade["outcome"]
    items.append(
        Item(
            "hard gates pass on every required seed (B, or B+ when claimed)",
            "pass" if outcome != "RED" and not missing else "fail",
            f"{folder}/grade.json",
            f"{outcome} on seeds {', '.join(map(str, grade['seeds']))}"
            + (f"; required seeds missing: {', '.join(map(str, missing))}" if missing else "")
            + f"; relocated_share {_relocated(pack)}",
            grade.get("next_action", "") or f"seg1b certify --seeds {','.join(map(str, required))} --policies DIR",
        )
    )
    claimed: grading.Level = "B_PLUS" if outcome == "GREEN_BPLUS" else "B"
    cv_fail = [f["gate"] for f in grade["failures"][claimed] if grading.family_of(f["gate"]) == "cv"]
    worst = max(grade["cv"].items(), key=lambda kv: kv[1], default=("–", 0.0))
    items.append(
        Item(
            f"stability: every core-metric CV within the claimed grade ({claimed.replace('_PLUS', '+')})",
            "fail" if cv_fail else "pass",
            f"{folder}/cv.csv",
            f"largest CV {worst[0]} {fmt(worst[1])}" + (f"; failing {', '.join(cv_fail)}" if cv_fail else ""),
            grading.TRIAGE["cv"],
        )
    )
    wrong = scope_problems(ev, "P4", info.get("policy_digests", {}), ev.seed)
    items.append(
        Item(
            "the certified bundle holds the locked P1 + P2 + P3 files (the rest the baseline's)",
            "fail" if wrong or "policy_digests" not in info else "pass",
            f"{folder}/pack.json",
            "; ".join(wrong) or ("" if "policy_digests" in info else "the pack records no policy digests"),
            "certify the integrated candidate's bundle (seg1b certify --policies DIR)",
        )
    )
    record_path = ev.rr.freeze_record(pack.name)
    record = read_optional(record_path)
    evidence = f"reports/{record_path.name}"
    items.append(
        Item(
            "final lock set recorded (policy files, code digest, scorecards, reports)",
            "pass" if record else "not yet",
            evidence,
            f"frozen {record['frozen_at']}" if record else "",
            f"seg1b freeze {pack.name}",
            settled_on_close=True,
        )
    )
    superseded = sorted({p.name for p in ev.rr.run_folders()} - set(discipline.referenced_runs(ev.root)))
    others = sorted(p.name for p in ev.rr.packs() if p.name != pack.name)
    left = superseded + [f"pack {p}" for p in others]
    items.append(
        Item(
            "superseded runs and packs pruned, the retained runs listed",
            "pass" if record and not left else ("fail" if record else "not yet"),
            evidence,
            (f"{len(record['retained'])} runs retained" + (f"; superseded since: {', '.join(left)}" if left else ""))
            if record
            else "",
            f"seg1b freeze {pack.name} again (prunes)" if record else f"seg1b freeze {pack.name} (prunes)",
            settled_on_close=True,
        )
    )
    return items
