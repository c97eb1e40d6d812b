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
from seg1b_dask.report import html
from seg1b_dask.report.pack_page import PACK_SECTIONS
from seg1b_dask.report.pages import report
from seg1b_dask.report.run_page import GATE_HEADER, GATE_NOTE, RUN_SECTIONS

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


def _contents(page: str, sections: tuple[str, ...]) -> None:
    """The table of contents comes before the first section and links every section, in
    order, to an id the page holds."""
    nav = re.search(r'<nav id="contents">(.*?)</nav>', page)
    assert nav and nav.start() < page.index("<section "), "a table of contents at the top"
    links = re.findall(r'<a href="#([^"]+)">([^<]+)</a>', nav.group(1))
    assert [target for target, _ in links] == list(sections)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert all(ids.count(target) == 1 for target, _ in links) and all(label.strip() for _, label in links)


def test_contents_and_headers_on_a_small_page() -> None:
    gate_row = [["top1_share", *"abcdefg"]]
    sections = [
        html.section("summary", "Summary", html.table(None, [["run", "r1"], ["seed", "42"]])),
        html.section("gates", "Gates (a margin ≥ 0 passes)", html.table(list(GATE_HEADER), gate_row)),
    ]
    page = html.page("a page", sections, ("summary", "gates"))
    _contents(page, ("summary", "gates"))
    assert '<a href="#gates">Gates</a>' in page  # the title up to its parenthesis
    summary = page[page.index('<section id="summary">') :].split("</section>")[0]
    assert "<th>" not in summary and "<tr></tr>" not in summary  # labelled values: no empty header row


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
    _contents(page, RUN_SECTIONS)
    gates = page[page.index('<section id="gates">') :].split("</section>")[0]
    heads = re.findall(r"<th>([^<]*)</th>", gates)
    assert heads == ["gate", "observed", "B limit", "B result", "B+ limit", "B+ result", "margin to B+", "breach"]
    assert "margin ≥ 0 passes" in gates and GATE_NOTE in gates and "margin &gt; 0" not in gates
    sentinel = re.search(r"<tr[^>]*><td>sentinel_flagged</td>(.*?)</tr>", gates)
    assert sentinel and sentinel.group(1).endswith("<td>pass</td><td>0.0000</td><td></td>")  # margin 0 passes
    assert "<th></th>" not in page and "<tr></tr>" not in page  # every header names its column
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
    _contents(page, PACK_SECTIONS)
    assert "<th></th>" not in page and "<tr></tr>" not in page
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
