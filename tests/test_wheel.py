"""The product installed from its built wheel (not editable) runs from any folder: its
policy bundles and reference data travel inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    source = tmp_path / "source"  # built from a copy: nothing is written into the repository
    ignore = shutil.ignore_patterns(
        ".git", "runs", "build", "bench", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
    )
    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)], check=True
    )
    (wheel,) = wheels.glob("seg1b_dask-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, seg1b = venv / "bin" / "python", venv / "bin" / "seg1b"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import seg1b_dask; print(seg1b_dask.__file__)"],
        cwd=empty,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(venv) in where, where  # the wheel's copy, not the source tree
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(seg1b), "run", "--quiet"], cwd=empty, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "every per-seed B+ gate passes" in done.stdout and "single-seed grade: GREEN_BPLUS" in done.stdout
    assert "baseline of seed 42: pinned now, by this command's first run" in done.stdout
    assert (empty / "runs" / "fix-data-engine" / "segment_1B" / "baseline_authority" / "seed=42.json").is_file()
