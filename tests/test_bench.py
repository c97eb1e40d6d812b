"""The benchmark entry point at a tiny size, as a user runs it: the knn suite without
scikit-learn (its columns are skipped, never a failure), the engine's nearest neighbours
identical to one global tree and to brute force, the JSON with the machine and every field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_knn_suite_runs_without_scikit_learn(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "sklearn"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("hidden by the test")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "knn.json"
    cmd = [sys.executable, str(REPO / "jobs" / "bench" / "run.py"), "knn", "--knn-sites", "2000,8000"]
    cmd += ["--repeat", "2", "--knn-check", "25", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/19," in done.stderr and "[19/19," in done.stderr  # progress counts up to its total
    assert "knn 8,000 sites" in done.stdout and f"written {out}" in done.stdout

    report = json.loads(out.read_text())
    assert report["suites"] == ["knn"] and report["machine"]["cpus"] == os.cpu_count()
    knn = report["knn"]
    assert knn["versions"]["scikit-learn"] is None
    for size in ("2000", "8000"):
        point = knn["sizes"][size]
        assert point["sites"] == int(size) and point["brute_force"]["max_rel_err_engine"] <= 1e-12
        methods = point["methods"]
        for name in ("sklearn_balltree_haversine", "sklearn_kdtree"):
            assert methods[name] == {"skipped": "scikit-learn is not importable"}
        for name in (
            "engine_bands_1_core",
            "engine_bands_all_cores",
            "ckdtree_global_workers_1",
            "ckdtree_global_workers_all",
        ):
            assert methods[name]["identical_to_engine"], name
            assert methods[name]["runs"] == 2 and len(methods[name]["seconds"]) == 2
        assert methods["engine_bands_all_cores"]["ratio_over_engine"] == 1.0


def test_unknown_suite_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "bench" / "run.py"), "nope"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and done.stderr.startswith("unknown suite(s) nope: use engine, grid30")
