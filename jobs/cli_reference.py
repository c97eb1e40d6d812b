"""Rewrite docs/cli.md from the click commands (``seg1b_dask.cli.reference.markdown``).

python3 jobs/cli_reference.py           # rewrite docs/cli.md
python3 jobs/cli_reference.py --check   # exit 1 when docs/cli.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from seg1b_dask.cli.reference import markdown  # noqa: E402

TARGET = REPO / "docs" / "cli.md"


def main(argv: list[str]) -> int:
    text = markdown()
    if "--check" in argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is out of date: run `python3 jobs/cli_reference.py`")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
