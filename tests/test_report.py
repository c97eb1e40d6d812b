"""The HTML report of a run and of a certification pack: every section, self-contained,
and rendered by a real browser without errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SharedRun

from seg1b_dask.chain.runner import DEFAULT_POLICIES
from seg1b_dask.lanes.certify import certify
from seg1b_dask.report.pack_page import PACK_SECTIONS
from seg1b_dask.report.pages import report
from seg1b_dask.report.run_page import RUN_SECTIONS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def candidate(seed42_green: SharedRun) -> tuple[Path, Path]:
    """A remediation run of seed 42 beside its pinned baseline (the fast lane pinned it): the
    session's, read-only."""
    return seed42_green.root, seed42_green.result.run_dir


@pytest.fixture
def candidate_copy(seed42_green: SharedRun, tmp_path: Path) -> tuple[Path, Path]:
    """The same, in a copy of its run root this test may write into."""
    copy = seed42_green.copy(tmp_path / "root")
    return copy.root, copy.result.run_dir


def _self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not reach the network"
    assert "<link" not in page


def test_run_report_has_every_section_and_needs_no_network(candidate_copy: tuple[Path, Path]) -> None:
    root, run = candidate_copy
    page = (run / "report.html").read_text()  # written by the fast lane
    for section in RUN_SECTIONS:
        assert f'<section id="{section}">' in page
    _self_contained(page)
    assert page.count("data:image/png;base64,") == 6  # map, choropleth, Lorenz, NN, regions, checkpoints
    checkpoints_section = page[page.index('<section id="checkpoints">') :].split("</section>")[0]
    assert "<td>country_gini</td>" in checkpoints_section and "passes" in checkpoints_section
    assert "baseline · seed 42" in page and "candidate · seed 42" in page
    assert "GREEN_BPLUS" in page and "relocated_share" in page and "Top moves" in page
    assert report(root, run.name) == run / "report.html"


@pytest.mark.slow
def test_pack_report_links_its_seeds_and_the_dask_report(candidate_copy: tuple[Path, Path]) -> None:
    root, _ = candidate_copy
    pack = certify(root, [42], DEFAULT_POLICIES, workers=1)
    page = (pack.folder / "report.html").read_text()
    for section in PACK_SECTIONS:
        assert f'<section id="{section}">' in page
    _self_contained(page)
    assert '<a href="dask-report.html">' in page and (pack.folder / "dask-report.html").is_file()
    (link,) = re.findall(r'href="(\.\./\.\./runs/[^"]+/report\.html)"', page)
    assert (pack.folder / link).resolve().is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's chromium package)")
def test_report_renders_in_headless_chromium(candidate: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = candidate
    url = (run / "report.html").as_uri()
    flags = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,5200",
    ]
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stderr[-2000:]
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))
    assert attrs["sections-present"].split(",") == list(RUN_SECTIONS)
    assert attrs["images-broken"] == "0" and attrs["console-errors"] == "0"
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert any("seg1b-report-ok" in line for line in console), "the page's own check ran"
    assert not [line for line in console if "seg1b-report-ok" not in line], console
    artefacts = Path(os.environ.get("SEG1B_TEST_ARTIFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / "report-seed42.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    print(f"report screenshot: {shot}")
