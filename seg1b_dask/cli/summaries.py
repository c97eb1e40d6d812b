"""What ``seg1b run``, ``score`` and ``certify`` print: a run's states and validation, its
scorecard beside its pinned baseline, a pack's table, and the loud line of a grade below
the bundle's target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from seg1b_dask.core.metrics import COUNTRY_METRICS
from seg1b_dask.core.text import columns, number
from seg1b_dask.grading.gates import GradeReport, Level, below_target, failure_table

if TYPE_CHECKING:
    from seg1b_dask.chain.runner import RunResult
    from seg1b_dask.lanes.certify import Pack
    from seg1b_dask.lanes.score import Scored

# What a run's and a pack's summary show, in this order.
CORE_METRICS = (*COUNTRY_METRICS, "nn_ratio", "nn_contraction")
REALISM_METRICS = ("sentinel_flagged", "merchant_countries_median", "merchants_above_1a_max_share", "near_city_share")


def clip(text: str, width: int) -> str:
    """``text`` cut at the last whole item (or word) that fits, marked with "…"."""
    if len(text) <= width:
        return text
    head = text[: width - 1]
    cut = max(head.rfind(", "), head.rfind(" "))
    return (head[:cut] if cut > 0 else head).rstrip(", ") + "…"


def _validation_line(stats: dict) -> str:
    if not stats["passed"]:
        return "FAIL (structural checks)"
    if stats.get("sealed", True):
        target = stats.get("target_grade", "none")
        return (
            "PASS (bundle sealed with _passed.flag"
            + ("" if target == "none" else f"; every per-seed {target.replace('_PLUS', '+')} gate passes")
            + ")"
        )
    grade = stats["target_grade"].replace("_PLUS", "+")
    return f"NOT SEALED: structure passes, {grade} gates fail: {', '.join(stats['failed_gates'])}"


def run_summary(result: RunResult) -> list[str]:
    lines = [
        f"seg1b run {result.run_id}  seed={result.seed}",
        f"  parameter_hash       {result.tokens.parameter_hash}",
        f"  manifest_fingerprint {result.tokens.manifest_fingerprint}",
        "",
        "  state              seconds  note",
    ]
    for r in result.states:
        note = (
            "reused from cache"
            if r.reused
            else clip(", ".join(f"{k}={v}" for k, v in r.stats.items() if not isinstance(v, dict | list)), 70)
        )
        if r.note:
            note = r.note
        lines.append(f"  {r.id} {r.name:<15} {r.seconds:7.2f}  {note}")
    m = result.validation["metrics"]
    lines += [
        "",
        f"  validation: {_validation_line(result.validation)}",
        f"  sites {m['sites']:,}  active countries {m['active_countries']} of {m['eligible_countries']} eligible  "
        f"({m['eligible_country_nonzero_share']:.4f})",
        f"  country_gini {m['country_gini']:.4f}  top1/5/10 {m['top1_share']:.4f} / {m['top5_share']:.4f} / "
        f"{m['top10_share']:.4f}  (k = {m['top1_k']} / {m['top5_k']} / {m['top10_k']})",
        f"  southern_hemisphere_share {m['southern_hemisphere_share']:.4f}",
    ]
    return lines


def seal_lines(card: dict[str, Any]) -> list[str]:
    """What the validation bundle vouches for, loud when it is not everything."""
    lines = []
    if not card["sealed"]:
        lines.append(
            f"  UNVERIFIED: no valid 1B flag ({card['unsealed_because']}): the figures below are S9's unsealed "
            "record, for diagnosis only; the run grades RED"
        )
    if card["failed_checks"]:
        lines.append(f"  STRUCTURAL FAIL: {', '.join(card['failed_checks'])} (S9's checks.json)")
    return lines


def price_lines(card: dict[str, Any]) -> list[str]:
    """The price of realism beside the grade: relocation against each grade's least, what
    it did to 1A's merchants, and the plausibility figures (never graded)."""
    f, price = card.get("fidelity", {}), card.get("price", {})
    least, ratio = price.get("least", {}), price.get("ratio", {})
    bounds = "; ".join(
        f"{ratio[lvl]:.2f} × the least for {lvl.replace('_PLUS', '+')} ({least[lvl]:.4f})"
        for lvl in ("B_PLUS", "B")
        if lvl in least
    )
    lines = [f"  price: relocated_share {f.get('relocated_share', 0.0):.4f}" + (f" = {bounds}" if bounds else "")]
    if "merchant_retention_median" in f:
        lines += [
            f"  merchants: retention median {f['merchant_retention_median']:.2f},"
            f" p10 {f['merchant_retention_p10']:.2f};"
            f" lost their home {f['merchants_lost_home']}; outlets in pairs 1A lacks {f['new_pair_share']:.3f};"
            f" new countries median {f['new_countries_median']:.0f}, p90 {f['new_countries_p90']:.0f},"
            f" max {f['new_countries_max']}",
            f"  moves: median {f['move_km_median']:,.0f} km, p90 {f['move_km_p90']:,.0f} km; outlets in new pairs"
            f" sit a median {f['new_pair_home_km_median']:,.0f} km (p90 {f['new_pair_home_km_p90']:,.0f}) from home",
        ]
    p = card.get("plausibility")
    if p:
        lines.append(
            f"  plausibility (not graded): shares rank with population {number(p['population_rank_correlation'])}"
            f" (Spearman, {p['countries']} countries); most served per person {p['max_per_capita_country']}"
            f" ×{p['max_per_capita_ratio']:.0f}; in countries < {p['small_country_population']:,} people"
            f" {p['small_country_share']:.2%}; rural {p['rural_share']:.2%}"
        )
    return lines


def score_summary(scored: Scored) -> list[str]:
    m = scored.card["metrics"]
    lines = ["", f"  scorecard ({scored.run_dir / 'scorecard'})", *seal_lines(scored.card)]
    lines.append(f"  {'metric':<32} {'value':>9} {'vs baseline':>12}")
    for key in CORE_METRICS:
        delta = scored.delta.get(key)
        lines.append(f"  {key:<32} {number(m[key]):>9} {f'{delta:+.4f}' if delta is not None else '':>12}")
    lines.append(f"  nearest neighbour p50 {m['nn_p50_km']:.3f} km  p99 {m['nn_p99_km']:.3f} km")
    lines.append("  regions: " + "  ".join(f"{r} {s:.3f}" for r, s in scored.card["region_share"].items()))
    lines.append(f"  collapse sentinel: {m['sentinel_flagged']} of the top-10 countries flagged")
    lines.append(
        f"  near_city_share {m['near_city_share']:.3f}   countries per merchant: median "
        f"{m['merchant_countries_median']:.0f}, p90 {m['merchant_countries_p90']:.0f}, "
        f"above 1A's largest ({m.get('merchant_countries_max_1a', 'n/a')}): {m['merchants_above_1a_max_share']:.2%}"
    )
    lines += price_lines(scored.card)
    pin, where = scored.card.get("baseline"), scored.key.where()
    pinned_now = scored.card.get("baseline_pinned_now")
    if pinned_now and pin and pinned_now.get("ran", pinned_now["run_id"]) == pinned_now["run_id"]:
        lines.append(
            f"  baseline of seed {scored.seed}: pinned now, by this command's first run {pinned_now['run_id']} "
            f"({where}; nn_ratio {pin['nn_ratio']:.3f}; its own grade {pinned_now['grade']}; "
            "`seg1b score` it for details)"
        )
    elif pinned_now and pin:  # another process pinned its own baseline first
        lines.append(
            f"  baseline of seed {scored.seed}: run {pinned_now['run_id']}, pinned by another process while this "
            f"command ran its own ({pinned_now['ran']}, identical bytes, not pinned) ({where}; "
            f"nn_ratio {pin['nn_ratio']:.3f})"
        )
    elif pin is None:
        lines.append(
            f"  no baseline pinned for seed {scored.seed} ({where}): `seg1b baseline --seed {scored.seed}` "
            "with this run's --policies and --upstream pins one"
        )
    elif pin["run_id"] == scored.run_dir.name:
        lines.append(
            f"  this run is now the pinned baseline of seed {scored.seed} ({where}; nn_ratio {pin['nn_ratio']:.3f})"
        )
    else:
        lines.append(f"  baseline of seed {scored.seed}: run {pin['run_id']} ({where}; nn_ratio {pin['nn_ratio']:.3f})")
    report = scored.grade
    lines.append(f"  single-seed grade: {report.outcome}  (next: {report.next_action})")
    if report.outcome == "RED":
        lines += failure_table(report, "B")
    return lines


def metric_table(pack: Pack) -> list[str]:
    """The pack's figures, a row per figure and a column per seed (then the CV across seeds),
    every label and value in the same columns whatever the longest label."""
    seed_list = list(pack.results)
    cards = {s: pack.scored[s].card for s in seed_list}
    rows = [["metric", *(f"seed {s}" for s in seed_list), "cv"]]
    for key in (*CORE_METRICS, *REALISM_METRICS):
        cv = number(pack.report.cv.get(key, float("nan")))
        rows.append([key, *(number(cards[s]["metrics"][key]) for s in seed_list), cv])
    for key in ("top1_share", "country_gini"):
        rows.append([f"bootstrap_upper:{key}", *(number(pack.scored[s].bootstrap.get(key)) for s in seed_list)])
    for key in ("relocated_share", "merchant_retention_median", "merchants_lost_home"):
        rows.append([key, *(number(cards[s]["fidelity"].get(key)) for s in seed_list)])
    for priced in ("B_PLUS", "B"):
        label = f"relocated ÷ least for {priced.replace('_PLUS', '+')}"
        rows.append([label, *(number(cards[s]["price"]["ratio"].get(priced)) for s in seed_list)])
    return columns(rows, [32, *(10 for _ in seed_list), 8], "<" + ">" * (len(seed_list) + 1))


def pack_summary(pack: Pack) -> list[str]:
    report = pack.report
    seed_list = list(pack.results)  # in certification order
    lines = [
        f"certification pack {pack.folder}",
        f"  seeds {', '.join(map(str, seed_list))}  wall {pack.wall_seconds:.1f} s",
        f"  content sha256 {pack.content_sha256}  (equal for this bundle and these seeds on any cluster)",
        "",
    ]
    lines += metric_table(pack)
    unsealed = [str(s) for s in seed_list if not pack.scored[s].card["sealed"]]
    if unsealed:
        lines.append(
            f"  UNVERIFIED: no valid 1B flag on seed(s) {', '.join(unsealed)}: their figures are for diagnosis"
        )
    lines += ["", f"  GRADE: {report.outcome}   next: {report.next_action}"]
    if report.uncertified:
        reached = report.reached_without_missing.replace("GREEN_", "").replace("PLUS", "+")
        lines.append(
            f"  per seed: {reached} on every seed graded; not a certification: required seed(s) "
            f"{', '.join(map(str, report.missing_seeds))} missing"
        )
    if report.outcome != "GREEN_BPLUS":
        level: Level = "B" if report.outcome == "RED" else "B_PLUS"
        lines.append(f"  failing {level.replace('_PLUS', '+')} gates:")
        lines += failure_table(report, level)
    if pack.promoted:
        promotion = "done (last_good -> this pack)"
    else:
        promotion = "refused: RED" if report.outcome == "RED" else "not requested"
    lines.append(f"  promotion: {promotion}")
    lines.append(f"  Dask performance report: {pack.folder / 'dask-report.html'}")
    lines.append(f"  report: {pack.folder / 'report.html'}")
    return lines


def below_target_line(report: GradeReport, target: str) -> str | None:
    """One unmissable line when a grade falls short of the bundle's target grade (None when
    it does not), naming the target's failing gates."""
    if not below_target(report.outcome, target):
        return None
    gates = ", ".join(dict.fromkeys(f.gate for f in report.failures["B_PLUS" if target == "B_PLUS" else "B"]))
    return f"{report.outcome} — below the bundle's target grade {target.replace('_PLUS', '+')}: {clip(gates, 160)}"
