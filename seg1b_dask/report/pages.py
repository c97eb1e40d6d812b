"""One self-contained HTML page per run and per certification pack (DESIGN §14): ``report``
finds which a reference names.

Images and CSS are inline: a page opens from disk with no network.
"""

from __future__ import annotations

from pathlib import Path

from seg1b_dask.io import discipline, packs
from seg1b_dask.io.lineage import safe_join
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.report.pack_page import pack_report
from seg1b_dask.report.run_page import run_report


def report(root: Path, ref: str) -> Path:
    """The page of a run or a pack, by id or folder."""
    root = Path(root).resolve()
    candidate = Path(ref)
    for folder in (candidate, RunRoot(root).run(ref), RunRoot(root).certification / ref):
        if (packs.pack_json(folder)).is_file():
            return pack_report(root, safe_join(root, folder.resolve()))
        if (packs.run_json(folder)).is_file():
            return run_report(root, safe_join(root, folder.resolve()))
    return run_report(root, discipline.run_dir(root, ref))
