"""A run's page: everything a reader needs to judge a candidate beside its pinned baseline —
where the sites are, how country shares fall off, the nearest-neighbour distribution, region
shares against their floors, every gate with its margin and bootstrap bound, where the shape
first goes wrong (the state checkpoints), the collapse sentinel, and the price of realism
(relocation, merchant footprints, the top moves)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from seg1b_dask.core import metrics
from seg1b_dask.grading import checkpoints, scoring
from seg1b_dask.grading import gates as grading
from seg1b_dask.io import discipline, packs
from seg1b_dask.io.datasets import SITE_LINEAGE, SITE_LOCATIONS, read_batches
from seg1b_dask.io.lineage import safe_join, write_text
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.verdict import bundle_verdict
from seg1b_dask.policies.bundle import PolicyBundle, sealed_bundle
from seg1b_dask.report.figures import (
    MAP_SIZE,
    checkpoint_figure,
    choropleth_figure,
    density_counts,
    lorenz_figure,
    map_figure,
    nn_figure,
    regions_figure,
)
from seg1b_dask.report.html import cell, img, page, section, table
from seg1b_dask.states.triage import triage_hints

SITES_PER_READ = 1_000_000  # rows of site_locations or site_lineage read at a time

RUN_SECTIONS = (
    "summary",
    "map",
    "choropleth",
    "lorenz",
    "nn",
    "regions",
    "gates",
    "checkpoints",
    "sentinel",
    "fidelity",
)


@dataclass(frozen=True)
class RunView:
    """What the page of one run shows, read from the run folder and its sealed outputs."""

    run_dir: Path
    meta: dict[str, Any]
    bundle: PolicyBundle
    card: dict[str, Any]
    unsealed_because: str  # "" when a valid 1B flag vouches for the egress and the figures
    density: NDArray[np.float64] | None  # sites per map pixel; None: unsealed, the egress is not shown
    moves: list[tuple[str, str, int]]
    profiles: dict[str, checkpoints.Profile] | None  # None: a run made before checkpoints existed


def load_run(root: Path, run: Path) -> RunView:
    meta = discipline.load_run(run, needs=("states", "policies"))
    judged = bundle_verdict(meta, root)
    card_path = packs.scorecard_dir(run)
    card = scoring.read_scorecard(card_path if packs.scorecard_json(run).is_file() else judged.folder)
    density = site_density(judged.egress) if judged.egress is not None else None
    profiles = checkpoints.read(run)
    return RunView(run, meta, sealed_bundle(meta), card, judged.problem, density, top_moves(root, meta), profiles)


def site_density(egress: Path) -> NDArray[np.float64]:
    """Sites per pixel of the map, summed over the egress read in batches."""
    counts = np.zeros(MAP_SIZE[::-1])
    for _, batch in read_batches(SITE_LOCATIONS.files(egress), ["lon_deg", "lat_deg"], SITES_PER_READ):
        counts += density_counts(batch.column("lon_deg").to_numpy(), batch.column("lat_deg").to_numpy())
    return counts


def top_moves(root: Path, meta: dict[str, Any], limit: int = 15) -> list[tuple[str, str, int]]:
    """The largest flows of 1A stubs from their 1A country to another 1B country."""
    files = SITE_LINEAGE.files(safe_join(root, meta["outputs"]["site_lineage"]))
    columns = ["source_country_iso", "legal_country_iso"]
    return flows((batch for _, batch in read_batches(files, columns, SITES_PER_READ)), limit)


def flows(lineage: Iterable[pa.Table], limit: int) -> list[tuple[str, str, int]]:
    keys = ["source_country_iso", "legal_country_iso"]
    parts = []
    for batch in lineage:
        moved = batch.filter(pc.not_equal(batch.column(keys[0]), batch.column(keys[1])))
        parts.append(moved.group_by(keys).aggregate([([], "count_all")]))
    counts = pa.concat_tables(parts).group_by(keys).aggregate([("count_all", "sum")]) if parts else None
    if counts is None or counts.num_rows == 0:
        return []
    counts = counts.rename_columns([*keys, "count_all"])
    order = [("count_all", "descending"), ("source_country_iso", "ascending"), ("legal_country_iso", "ascending")]
    rows = counts.sort_by(order).slice(0, limit).to_pylist()
    return [(r["source_country_iso"], r["legal_country_iso"], int(r["count_all"])) for r in rows]


def _checkpoints(view: RunView, baseline: RunView | None) -> str:
    if view.profiles is None:
        return '<p class="note">This run predates checkpoints: <code>seg1b diagnose RUN</code> writes them.</p>'
    base = baseline.profiles if baseline is not None else None
    panels = [("baseline", base)] if base is not None else []
    figure = img(checkpoint_figure([*panels, ("candidate", view.profiles)], view.bundle.gates), "checkpoints")
    level: grading.Level = "B_PLUS" if view.bundle.s9_validation.target_grade == "B_PLUS" else "B"
    traces = checkpoints.trace_runs(
        view.card,
        view.profiles,
        view.bundle.gates,
        level,
        triage_hints(view.bundle),
        baseline.card if baseline is not None else None,
        base,
    )
    rows, classes = [], []
    for t in traces:
        cells = [
            cell(t.run[s]) + (f" ({cell(t.baseline[s])})" if s in t.baseline else "") if s in t.run else "–"
            for s in checkpoints.STAGES
        ]
        where = t.first_wrong or "passes"
        rows.append([html.escape(t.gate), cell(t.threshold), *cells, where, html.escape(t.hint)])
        classes.append("fail" if t.first_wrong else "pass")
    note = (
        f'<p class="note">Each gate at {level.replace("_PLUS", "+")} measured at every state that can measure it: '
        "1A's counts, S2's mass vector, S4's integer allocation, the published sites (S8); the baseline's value in "
        "brackets. Geometry, urban share and bootstrap bounds exist on sites only.</p>"
    )
    trace_table = table(["gate", "limit", *checkpoints.STAGES, "first wrong", "next"], rows, classes)
    return figure + note + trace_table


GATE_HEADER = ("gate", "observed", "B limit", "B result", "B+ limit", "B+ result", "margin to B+", "breach")
GATE_NOTE = (
    '<p class="note">A limit with ≤ is a maximum, with ≥ a minimum; a bootstrap bound is gated at B+ only. '
    "The margin to B+ is how far the observed value lies inside the B+ limit: a gate passes when it is ≥ 0 "
    "(0: exactly at the limit, e.g. the collapse sentinel's 0 flagged countries against the shipped limit of 0) "
    "and fails by as much as it is below 0.</p>"
)


def gate_rows(
    card: dict[str, Any], bundle: PolicyBundle, bootstrap: dict[str, float] | None
) -> tuple[list[list[str]], list[str]]:
    """Every gate at B and B+ (``GATE_HEADER``'s columns): each grade's limit, "≤" a maximum
    and "≥" a minimum, and whether it holds; the margin to B+ and the bootstrap bounds."""
    b = {r["gate"]: r for r in grading.gate_table(card, bundle.gates, "B", bootstrap)}
    bplus = grading.gate_table(card, bundle.gates, "B_PLUS", bootstrap)
    rows, classes = [], []

    def limit(row: dict[str, Any]) -> str:
        return ("≤ " if row["direction"] == "max" else "≥ ") + cell(row["threshold"])

    for r in bplus:
        rb = b.get(r["gate"])
        rows.append(
            [
                html.escape(r["gate"]),
                cell(r["observed"]),
                limit(rb) if rb else "",
                ("pass" if rb["passed"] else "FAIL") if rb else "",
                limit(r),
                "pass" if r["passed"] else "FAIL",
                cell(r["margin"]),
                html.escape(r["breach"]),
            ]
        )
        classes.append("pass" if r["passed"] else "fail")
    return rows, classes


def _shares(card: dict[str, Any]) -> dict[str, float]:
    return {c: s for c, _, s in card["country_shares"]}


def _counts(card: dict[str, Any]) -> list[int]:
    return [n for _, n, _ in card["country_shares"]]


def render_run(view: RunView, baseline: RunView | None) -> str:
    card, m, meta = view.card, view.card["metrics"], view.meta
    pair = [("baseline", baseline)] if baseline is not None else []
    views = [*pair, ("candidate" if baseline is not None else "this run", view)]
    grade = card.get("grade_single_seed", {}).get("outcome", "?")
    sealed = f"no, every figure is unverified: {view.unsealed_because}" if view.unsealed_because else "yes"
    summary = table(
        None,
        [
            ["run", html.escape(meta["run_id"])],
            ["seed", str(meta["seed"])],
            ["policy bundle", html.escape(meta["policy_bundle"])],
            ["target grade (S9)", html.escape(view.bundle.s9_validation.target_grade)],
            ["sealed", html.escape(sealed)],
            ["single-seed grade", f'<span class="grade">{html.escape(grade)}</span>'],
            [
                "sites / active of eligible countries",
                f"{m['sites']:,} / {m['active_countries']} of {m['eligible_countries']}",
            ],
            ["relocated_share (the price of realism)", cell(card.get("fidelity", {}).get("relocated_share", 0.0))],
            ["parameter_hash", f"<code>{meta['parameter_hash']}</code>"],
            ["manifest_fingerprint", f"<code>{meta['manifest_fingerprint']}</code>"],
            [
                "pinned baseline",
                html.escape(baseline.meta["run_id"])
                if baseline
                else "none (this run is the baseline, or none is pinned)",
            ],
        ],
    )
    sections = [section("summary", "Summary", summary)]
    maps = [
        (f"{label} · seed {v.meta['seed']} · {v.card['metrics']['sites']:,} sites", v.density)
        for label, v in views
        if v.density is not None
    ]
    caption = '<p class="note">' + " | ".join(html.escape(title) for title, _ in maps) + "</p>"
    body = (
        caption + img(map_figure(maps), "site density maps")
        if maps
        else '<p class="note">The egress was not sealed: no map.</p>'
    )
    sections.append(section("map", "Where the sites are (log density, datashader; country outlines)", body))
    sections.append(
        section(
            "choropleth",
            "Country shares",
            img(choropleth_figure([(label, _shares(v.card)) for label, v in views]), "choropleth"),
        )
    )
    lorenz = img(lorenz_figure([(label, _counts(v.card)) for label, v in views]), "Lorenz curve")
    sections.append(section("lorenz", "Concentration", lorenz + _concentration_table(views)))
    nn = [(label, v.card["metrics"]) for label, v in views if "nn_histogram" in v.card["metrics"]]
    nn_body = (
        img(nn_figure(nn), "nearest-neighbour distances")
        if nn
        else '<p class="note">No distance histogram in this scorecard.</p>'
    )
    nn_body += table(
        ["run", "p50 km", "p99 km", "ratio p99/p50", "contraction"],
        [
            [
                label,
                cell(v.card["metrics"]["nn_p50_km"]),
                cell(v.card["metrics"]["nn_p99_km"]),
                cell(v.card["metrics"]["nn_ratio"]),
                cell(v.card["metrics"].get("nn_contraction")),
            ]
            for label, v in views
        ],
    )
    sections.append(section("nn", "Nearest neighbours", nn_body))
    floors = view.bundle.gates.region_floor_share
    regions = img(regions_figure([(label, v.card["region_share"]) for label, v in views], floors), "region shares")
    sections.append(section("regions", "Regions", regions))
    rows, classes = gate_rows(card, view.bundle, card.get("bootstrap_upper_95") or None)
    gates = GATE_NOTE + table(list(GATE_HEADER), rows, classes)
    sections.append(section("gates", "Gates (a margin ≥ 0 passes)", gates))
    stages = _checkpoints(view, baseline)
    sections.append(section("checkpoints", "Where the shape first goes wrong: 1A → S2 → S4 → S8", stages))
    # Figures against the placement the country's tile weights ask for (n/a in an older scorecard).
    sentinel = table(
        ["country", "sites", "grid rows seen (expected)", "row share", "grid columns seen (expected)", "column share"]
        + ["relative anisotropy", "flagged"],
        [
            [
                html.escape(c),
                cell(s.get("sites")),
                f"{cell(s.get('distinct_rows'))} ({cell(s.get('expected_distinct_rows'), 0)})",
                cell(s.get("distinct_rows_share"), 3),
                f"{cell(s.get('distinct_cols'))} ({cell(s.get('expected_distinct_cols'), 0)})",
                cell(s.get("distinct_cols_share"), 3),
                cell(s.get("relative_anisotropy"), 2),
                "FLAGGED" if s["flagged"] else "clear",
            ]
            for c, s in card.get("sentinel", {}).items()
        ],
        ["fail" if s["flagged"] else "pass" for s in card.get("sentinel", {}).values()],
    )
    title = "Collapse sentinel (top-10 countries with ≥ 50 sites, against the placement their tile weights ask for)"
    sections.append(section("sentinel", title, sentinel))
    sections.append(section("fidelity", "The price of realism: fidelity to 1A", _fidelity(card, view.moves)))
    return page(f"seg1b run report · seed {meta['seed']} · {meta['policy_bundle']}", sections, RUN_SECTIONS)


def _concentration_table(views: list[tuple[str, RunView]]) -> str:
    keys = metrics.COUNTRY_METRICS
    return table(["run", *keys], [[label, *(cell(v.card["metrics"][k]) for k in keys)] for label, v in views])


MERCHANT_FIGURES = (
    ("merchant_retention_median", "outlets in the merchant's own 1A countries: median merchant"),
    ("merchant_retention_p10", "… 10th percentile merchant"),
    ("merchants_lost_home", "merchants without an outlet at home (must be 0)"),
    ("home_outlets_kept_share", "1A home outlets kept at home"),
    ("new_pair_share", "outlets in (merchant, country) pairs 1A lacks"),
    ("new_countries_median", "new countries per merchant: median"),
    ("new_countries_p90", "… p90"),
    ("new_countries_max", "… max"),
    ("merchants_over_new_country_limit", "merchants above the limit of new countries"),
    ("move_km_median", "moved outlets: km from source country, median"),
    ("move_km_p90", "… p90"),
    ("new_pair_home_km_median", "outlets in new pairs: km from home, median"),
    ("new_pair_home_km_p90", "… p90"),
)


def _price_rows(card: dict[str, Any]) -> list[list[str]]:
    """``relocated_share`` beside each grade's least relocation (its bound) and their ratio."""
    price = card.get("price", {})
    rows = [["relocated_share", cell(card.get("fidelity", {}).get("relocated_share", 0.0))]]
    for level in ("B_PLUS", "B"):
        if level in price.get("least", {}):
            name = level.replace("_PLUS", "+")
            rows.append(
                [f"least relocation any vector passing {name}'s country gates needs", cell(price["least"][level])]
            )
            rows.append([f"relocated ÷ least for {name}", cell(price["ratio"][level])])
    return rows


def _fidelity(card: dict[str, Any], moves: list[tuple[str, str, int]]) -> str:
    f = card.get("fidelity", {})
    if not f:
        return '<p class="note">No fidelity figures recorded.</p>'
    price = table(["price", "value"], _price_rows(card))
    merchants = table(
        ["what 1A's merchants kept", "value"], [[label, cell(f.get(k))] for k, label in MERCHANT_FIGURES if k in f]
    )
    names = (
        "merchant_countries_median",
        "merchant_countries_p90",
        "merchant_countries_max",
        "merchants_above_1a_max_share",
        "outside_home_share",
    )
    footprint = table(
        ["merchant footprint", "1A", "1B"], [[n, cell(f.get(f"{n}_1a")), cell(f.get(f"{n}_1b"))] for n in names]
    )
    p = card.get("plausibility")
    plausible = (
        table(
            ["plausibility (reported, not graded)", "value"],
            [
                ["country shares rank with population (Spearman)", cell(p["population_rank_correlation"])],
                [
                    f"most served per person: {html.escape(p['max_per_capita_country'])}",
                    f"×{p['max_per_capita_ratio']:.0f}",
                ],
                [
                    f"outlets in countries of fewer than {p['small_country_population']:,} people",
                    cell(p["small_country_share"]),
                ],
                [
                    f"rural: farther than {p['rural_km']:g} km from a place of {p['rural_min_population']:,}",
                    cell(p["rural_share"]),
                ],
            ],
        )
        if p
        else ""
    )
    flows = (
        table(["1A country", "1B country", "outlets"], [[a, b, f"{n:,}"] for a, b, n in moves])
        if moves
        else "<p>No outlet moved.</p>"
    )
    return price + merchants + footprint + plausible + "<h3>Top moves</h3>" + flows


def run_report(root: Path, run: Path) -> Path:
    """Write ``report.html`` into a run folder (beside its pinned baseline's figures)."""
    root = Path(root).resolve()
    view = load_run(root, run)
    baseline = None
    pin = discipline.baseline_of_run(root, view.meta)
    if pin and pin["run_id"] != view.meta["run_id"] and (packs.run_json(RunRoot(root).run(pin["run_id"]))).is_file():
        baseline = load_run(root, RunRoot(root).run(pin["run_id"]))
    path = packs.report_html(run)
    write_text(path, render_run(view, baseline))
    return path
