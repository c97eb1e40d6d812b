"""The documentation stays complete inside the repository and in step with the code: every
link of the README and docs/ resolves to a file (and heading) of the repository, the CLI
reference equals what the commands generate, and every error code is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "cluster" / "README.md"]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
_EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are not links."""
    return _CODE.sub("", _FENCE.sub("", text))


def targets(text: str) -> list[str]:
    """Every link and image target of a Markdown text (inline and reference definitions)."""
    prose = _prose(text)
    return _INLINE.findall(prose) + _DEFINITION.findall(prose)


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces
    to hyphens, a repeated heading numbered -1, -2, …"""
    seen: dict[str, int] = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        slug = "".join(c for c in heading.lower() if c.isalnum() or c in " -_").replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_problems(page: Path, text: str, root: Path) -> list[str]:
    """What is wrong with the links of ``text`` (the content of ``page``, inside ``root``):
    a target outside the repository, a missing file, or an anchor no heading makes."""
    root = root.resolve()
    problems = []
    for target in targets(text):
        if target.startswith(_EXTERNAL):
            continue
        if not target or "../shared" in target or target.startswith("/"):
            problems.append(f"{target!r} leaves the repository")
            continue
        path_part, _, anchor = target.partition("#")
        if not path_part:  # an anchor of this very page
            if anchor not in anchors(text):
                problems.append(f"{target!r}: no heading makes the anchor #{anchor}")
            continue
        resolved = (page.parent / path_part).resolve()
        if not resolved.is_relative_to(root):
            problems.append(f"{target!r} leaves the repository")
        elif not resolved.exists():
            problems.append(f"{target!r} points to a missing file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            problems.append(f"{target!r}: no heading makes the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_stay_inside_the_repository(page: Path) -> None:
    assert page.is_file(), f"{page.relative_to(REPO)} is missing"
    problems = link_problems(page, page.read_text(encoding="utf-8"), REPO)
    assert not problems, f"{page.relative_to(REPO)}: " + "; ".join(problems)


def test_docs_name_no_file_outside_a_clone() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for name in ("../shared", "DESIGN.md", "FACTS.md", "DESIGN §"):
            assert name not in text, f"{page.relative_to(REPO)} names {name}, which a clone does not hold"


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    (tmp_path / "repo" / "docs").mkdir(parents=True)
    (tmp_path / "repo" / "README.md").write_text("# Title\n\n## A section\n", encoding="utf-8")
    (tmp_path / "repo" / "docs" / "other.md").write_text("# Other page\n", encoding="utf-8")
    (tmp_path / "outside.md").write_text("# Outside\n", encoding="utf-8")
    return tmp_path / "repo"


@pytest.mark.parametrize(
    "link, problem",
    [
        ("[design](../shared/DESIGN.md)", "leaves the repository"),
        ("[up](../../outside.md)", "leaves the repository"),
        ("[abs](/etc/hostname)", "leaves the repository"),
        ("[gone](missing.md)", "missing file"),
        ("![map](img/map.png)", "missing file"),
        ("[here](#no-such-heading)", "no heading makes the anchor"),
        ("[there](../README.md#nope)", "no heading makes the anchor"),
        ("[ref]: ../../outside.md", "leaves the repository"),
    ],
)
def test_the_link_checker_finds_bad_links(fake_repo: Path, link: str, problem: str) -> None:
    page = fake_repo / "docs" / "page.md"
    problems = link_problems(page, f"# Page\n\nSee {link} for more.\n" if "]:" not in link else link, fake_repo)
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    "link",
    [
        "[web](https://example.org/a(b))",
        "[up](../README.md#a-section)",
        "[same](other.md)",
        "[self](#page)",
        "`[code](missing.md)`",
        "```\n[fenced](missing.md)\n```",
    ],
)
def test_the_link_checker_accepts_good_links(fake_repo: Path, link: str) -> None:
    page = fake_repo / "docs" / "page.md"
    assert link_problems(page, f"# Page\n\n{link}\n", fake_repo) == []


def test_cli_reference_is_current() -> None:
    from seg1b_dask.cli.reference import markdown

    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == markdown(), "docs/cli.md differs from the commands: run `python3 jobs/cli_reference.py`"


def test_cli_reference_has_every_command_and_no_local_path() -> None:
    import click

    import seg1b_dask.cli  # noqa: F401  (registers every command)
    from seg1b_dask.cli.app import main
    from seg1b_dask.cli.reference import markdown

    text = markdown()
    ctx = click.Context(main, info_name="seg1b")
    for name in main.list_commands(ctx):
        assert f"### `seg1b {name}`" in text
        command = main.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option):
                assert f"`{param.opts[0]}`" in text
    assert str(REPO) not in text and "/home/" not in text and "UNSET" not in text


def test_every_error_code_is_documented() -> None:
    from seg1b_dask.errors import Code

    text = (REPO / "docs" / "errors.md").read_text(encoding="utf-8")
    missing = [code.name for code in Code if f"`{code.name}`" not in text]
    assert not missing, f"docs/errors.md lacks {missing}"
