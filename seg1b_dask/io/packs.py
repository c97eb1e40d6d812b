"""Run folders and certification packs: the name of every file in them, where each lives,
and the pack's content digest. No other module spells these names.

    runs/<run_id>/run.json              the run's receipt
    runs/<run_id>/scorecard/            scorecard.json and its companion tables
    runs/<run_id>/checkpoints/          the state checkpoints
    runs/<run_id>/report.html           the run's page
    certification/<pack>/pack.json      what was certified, and the pack's content digest
    certification/<pack>/grade.json     the grade across seeds (with the CV)
    certification/<pack>/pooled.json    each metric's mean over the seeds
    certification/<pack>/cv.csv         per metric: every seed, the mean and the CV
    certification/<pack>/seeds/seed=<n>/  each seed's scorecard
    certification/<pack>/report.html, dask-report.html
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

RUN_JSON = "run.json"
SCORECARD = "scorecard"
SCORECARD_JSON = "scorecard.json"
COUNTRY_SHARES_CSV = "country_shares.csv"
REGION_SHARES_CSV = "region_shares.csv"
NN_QUANTILES_CSV = "nn_quantiles.csv"
SENTINEL_CSV = "sentinel.csv"
CHECKPOINTS = "checkpoints"
REPORT_HTML = "report.html"
PACK_JSON = "pack.json"
GRADE_JSON = "grade.json"
POOLED_JSON = "pooled.json"
CV_CSV = "cv.csv"
DASK_REPORT_HTML = "dask-report.html"
SEEDS = "seeds"


def run_json(run: Path) -> Path:
    return run / RUN_JSON


def scorecard_dir(run: Path) -> Path:
    return run / SCORECARD


def scorecard_json(run: Path) -> Path:
    """A run's scored scorecard (``seg1b score``)."""
    return run / SCORECARD / SCORECARD_JSON


def checkpoints_dir(run: Path) -> Path:
    return run / CHECKPOINTS


def report_html(folder: Path) -> Path:
    """The page of a run or a pack."""
    return folder / REPORT_HTML


def pack_json(pack: Path) -> Path:
    return pack / PACK_JSON


def grade_json(pack: Path) -> Path:
    return pack / GRADE_JSON


def pooled_json(pack: Path) -> Path:
    return pack / POOLED_JSON


def cv_csv(pack: Path) -> Path:
    return pack / CV_CSV


def dask_report_html(pack: Path) -> Path:
    return pack / DASK_REPORT_HTML


def seed_scorecard_dir(pack: Path, seed: int | str) -> Path:
    """One seed's scorecard folder inside a pack."""
    return pack / SEEDS / f"seed={seed}"


def pack_seeds(pack: Path) -> list[int]:
    """The seeds whose scorecards a pack holds, in the order it certified them."""
    return [int(s) for s in json.loads(pack_json(pack).read_text())["seeds"]]


# What says which runs made a pack, when and how fast, but not what they computed.
RECEIPT_KEYS = frozenset({"run_id", "run_ids", "baseline_run_ids", "baseline_pinned_now", "wall_seconds"})
RECEIPT_FILES = frozenset({DASK_REPORT_HTML, REPORT_HTML})


def _without_receipts(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_receipts(v) for k, v in value.items() if k not in RECEIPT_KEYS | {"content_sha256"}}
    if isinstance(value, list):
        return [_without_receipts(v) for v in value]
    return value


def pack_content_sha256(folder: Path) -> str:
    """One digest of everything a pack's outputs determine (every file but the HTML pages,
    JSON without its receipts): the packs of one bundle and seeds made on any cluster, with
    any worker count, compare equal by it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in RECEIPT_FILES):
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_without_receipts(json.loads(data)), sort_keys=True).encode()
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()
