"""The product installed from its built wheel (not editable) runs from any folder: its
policy bundles and reference data travel inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from deploy_files import REPO, dockerfile

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path: Path) -> None:
    """Built, like the image's environment stage, from only what the Dockerfile copies; then the
    image's default command (ENTRYPOINT + CMD) runs from the venv, ``/runs`` being a folder."""
    image = dockerfile()
    source = tmp_path / "source"  # built from a copy: nothing is written into the repository
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    source.mkdir()
    for name in image.build_copies:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)], check=True
    )
    (wheel,) = wheels.glob("seg1b_dask-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The new venv sees the dependencies of the interpreter running the tests — a system
    # Python or a virtualenv alike (--system-site-packages would give a virtualenv's base
    # interpreter instead) — and takes seg1b_dask from the wheel alone.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "test-dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    volume = tmp_path / "runs"  # plays the image's /runs
    volume.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the wheel, never a source tree
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    where = subprocess.run(
        [str(python), "-c", "import seg1b_dask; print(seg1b_dask.__file__)"],
        cwd=volume,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert str(venv) in where, where  # the wheel's copy, not the source tree
    argv = [a.replace("/runs", str(volume), 1) if a.startswith("/runs") else a for a in image.default_argv]
    assert argv[0] == "seg1b" and shutil.which("seg1b", path=env["PATH"]) == str(venv / "bin" / "seg1b")
    done = subprocess.run(argv, cwd=volume, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "every per-seed B+ gate passes" in done.stdout and "single-seed grade: GREEN_BPLUS" in done.stdout
    assert "baseline of seed 42: pinned now, by this command's first run" in done.stdout
    root = Path(argv[argv.index("--root") + 1])
    assert len(list((root / "baseline_authority" / "seed=42" / "grid=300").glob("upstream=*.json"))) == 1
    # the image's other two roles hand their options to Dask's own command line
    for role, args in (("scheduler", []), ("worker", ["--root", str(volume)])):
        roles = subprocess.run(
            ["seg1b", role, *args, "--", "--help"], cwd=volume, env=env, capture_output=True, text=True
        )
        assert roles.returncode == 0 and f"Launch a Dask {role}" in roles.stdout, roles.stderr
