from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from seg1b_dask.runner import BASELINE_POLICIES
from seg1b_dask.upstream import write_bundle

POLICIES = BASELINE_POLICIES


@pytest.fixture(scope="session")
def bundle42(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine 1A stand-in bundle for seed 42 (copy it before tampering)."""
    out = tmp_path_factory.mktemp("upstream") / "seed=42"
    write_bundle(42, out)
    return out


@pytest.fixture
def bundle_copy(bundle42: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle42, target)
    return target


@pytest.fixture
def policies_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies" / "baseline"
    shutil.copytree(POLICIES, target)
    shutil.copy(POLICIES.parent / "gates.yaml", target.parent / "gates.yaml")
    return target
