"""A certification pack's page: per-seed figures with the CV across seeds, the price of
realism per seed, the grade with its failing gates, and the Dask performance report."""

from __future__ import annotations

import html
import json
from pathlib import Path

from seg1b_dask.grading import gates as grading
from seg1b_dask.grading import scoring
from seg1b_dask.io import packs
from seg1b_dask.io.lineage import write_text
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.report.html import cell, page, section, table
from seg1b_dask.report.run_page import MERCHANT_FIGURES

PACK_SECTIONS = ("summary", "seeds", "fidelity", "grade", "performance")


def pack_report(root: Path, pack: Path, final: Path | None = None) -> Path:
    """Write ``report.html`` into a certification pack: per-seed table, CV, grade, links
    (``final``: where a staged pack will be renamed to)."""
    root = Path(root).resolve()
    meta = json.loads((packs.pack_json(pack)).read_text())
    grade = json.loads((packs.grade_json(pack)).read_text())
    seeds = meta["seeds"]
    cards = {s: scoring.read_scorecard(packs.seed_scorecard_dir(pack, s)) for s in seeds}
    cv = grade["cv"]
    keys = [m for m, _, _ in grading.METRIC_GATES] + ["nn_ratio"]
    seed_rows = [[k, *(cell(cards[s]["metrics"].get(k)) for s in seeds), cell(cv[k]) if k in cv else ""] for k in keys]
    for k in grading.CONCENTRATION:
        seed_rows.append(
            [f"bootstrap_upper:{k}", *(cell(grade["bootstrap_upper"].get(str(s), {}).get(k)) for s in seeds), ""]
        )
    links = []
    for s, run_id in zip(seeds, meta["run_ids"], strict=True):
        target = packs.report_html(RunRoot(root).run(run_id))
        links.append(
            f'<a href="../../runs/{html.escape(run_id)}/{packs.REPORT_HTML}">seed {s}</a>'
            if target.is_file()
            else f"seed {s}"
        )
    summary = table(
        None,
        [
            ["pack", html.escape((final or pack).name)],
            ["policy bundle", html.escape(meta["policy_bundle"])],
            ["parameter_hash", f"<code>{meta['parameter_hash']}</code>"],
            ["seeds", ", ".join(map(str, seeds))],
            ["grade", f'<span class="grade">{html.escape(grade["outcome"])}</span>'],
            ["next", html.escape(grade.get("next_action", ""))],
            ["wall", f"{meta['wall_seconds']:.1f} s"],
            ["run reports", " · ".join(links)],
        ],
    )
    sections = [section("summary", "Summary", summary)]
    sections.append(
        section(
            "seeds",
            "Per seed (CV across seeds in the last column)",
            table(["metric", *(f"seed {s}" for s in seeds), "cv"], seed_rows),
        )
    )
    fidelity = [[k, *(cell(cards[s].get("fidelity", {}).get(k)) for s in seeds)] for k in ("relocated_share",)]
    for level in ("B_PLUS", "B"):
        name = level.replace("_PLUS", "+")
        fidelity.append(
            [
                f"relocated ÷ least for {name}",
                *(cell(cards[s].get("price", {}).get("ratio", {}).get(level)) for s in seeds),
            ]
        )
    fidelity += [
        [label, *(cell(cards[s].get("fidelity", {}).get(k)) for s in seeds)] for k, label in MERCHANT_FIGURES[:5]
    ]
    sections.append(
        section("fidelity", "The price of realism per seed", table(["figure", *(f"seed {s}" for s in seeds)], fidelity))
    )
    failures = [f for level in ("B", "B_PLUS") for f in grade["failures"][level]]
    fail_rows = [
        [
            f["level"],
            html.escape(f["gate"]),
            "all" if f["seed"] is None else str(f["seed"]),
            cell(f["threshold"]),
            cell(f["observed"]),
            html.escape(f["hint"]),
        ]
        for f in failures
    ]
    grade_body = (
        table(["level", "gate", "seed", "threshold", "observed", "triage"], fail_rows, ["fail"] * len(fail_rows))
        if fail_rows
        else '<p class="grade pass">Every gate passes on every seed.</p>'
    )
    sections.append(section("grade", f"Grade: {grade['outcome']}", grade_body))
    dask = packs.dask_report_html(pack)
    perf = (
        '<p><a href="dask-report.html">Dask performance report</a> (opens from disk)</p>'
        if dask.is_file()
        else "<p>No Dask report.</p>"
    )
    sections.append(section("performance", "Performance", perf))
    path = packs.report_html(pack)
    title = f"seg1b certification pack · {meta['policy_bundle']} · {grade['outcome']}"
    write_text(path, page(title, sections, PACK_SECTIONS))
    return path
