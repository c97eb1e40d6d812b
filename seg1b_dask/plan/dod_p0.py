"""P0, baseline authority: the seed's pinned baseline, its scorecard and its checkpoints."""

from __future__ import annotations

from seg1b_dask.grading import checkpoints
from seg1b_dask.io import packs
from seg1b_dask.io.refdata import refdata_version
from seg1b_dask.plan.evidence import Evidence
from seg1b_dask.plan.items import Item, baseline_policies, fmt
from seg1b_dask.policies.bundle import load_bundle


def p0_items(ev: Evidence) -> tuple[str | None, list[Item]]:
    seed = ev.seed
    pin, key = ev.pin(seed), ev.pin_key(seed)
    pin_file = ev.rel(key.path(ev.root)) if key else f"{ev.rel(ev.rr.pins)}/seed={seed}/"
    text = f"baseline of seed {seed} pinned, its lineage tokens equal its run's"
    if pin is None:
        return None, [Item(text, "not yet", pin_file, action=f"seg1b baseline --seed {seed}")]
    run_id = pin["run_id"]
    meta = ev.meta(run_id)
    folder = f"runs/{run_id}"
    bad = [k for k in ("run_id", "seed", "parameter_hash", "manifest_fingerprint") if meta is None or meta[k] != pin[k]]
    items = [
        Item(
            text,
            "fail" if bad else "pass",
            pin_file,
            f"run.json missing or differing in {', '.join(bad)}" if bad else f"run {run_id}",
            "the pinned run is damaged: restore it from a backup of the run root",
        )
    ]
    card = ev.card(run_id)
    tables = (packs.SCORECARD_JSON, packs.COUNTRY_SHARES_CSV, packs.REGION_SHARES_CSV, packs.NN_QUANTILES_CSV)
    missing = [t for t in tables if not (packs.scorecard_dir(ev.rr.run(run_id)) / t).is_file()]
    stored = card is not None and not missing and (card.get("baseline") or {}).get("run_id") == run_id
    items.append(
        Item(
            "baseline scorecard and companion tables stored (country, region, NN quantiles)",
            "pass" if stored else "fail",
            f"{folder}/scorecard/",
            (
                f"Gini {fmt(card['metrics']['country_gini'])}, top1 {fmt(card['metrics']['top1_share'])}, "
                f"nn_ratio {card['metrics']['nn_ratio']:.3f}; its grade {card['grade_single_seed']['outcome']}"
            )
            if stored and card
            else f"missing: {', '.join(missing) or 'the pin in scorecard.json'}",
            f"seg1b score {run_id}",
        )
    )
    items.append(
        Item(
            "S2 / S4 / S8 checkpoints of the baseline captured",
            "pass" if ev.profiles(run_id) else "fail",
            f"{folder}/{checkpoints.FOLDER}/",
            "country mass, post-integerization and site profiles, NN tail, sentinel",
            f"seg1b diagnose {run_id} (writes the checkpoints of a run made before they existed)",
        )
    )
    shipped = load_bundle(baseline_policies(), refdata_version()).digests
    differ = sorted(k for k, v in shipped.items() if k != "gates" and meta and meta["policy_digests"][k] != v)
    items.append(
        Item(
            "the authority is the legacy posture (the shipped baseline bundle's policy files)",
            "fail" if differ or meta is None else "pass",
            f"{folder}/run.json",
            f"differs in {', '.join(differ)}" if differ else (f"bundle {meta['policy_bundle']}" if meta else ""),
            "a seed's pin is permanent: start a new run root and pin policies/baseline",
        )
    )
    return run_id, items
