from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from seg1b_dask.chain.runner import BUNDLES
from seg1b_dask.engine.execution import Execution
from seg1b_dask.io.upstream import write_bundle

MakeBundle = Callable[..., Path]


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


def _merge(data: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    """``make_bundle("baseline", s4_alloc_plan={"tile_allocation": {"tie_break": "keyed"}},
    gates={...})``: a copy of a shipped policy bundle (with its own gates.yaml) in the test's
    folder, each named file's YAML merged with the overrides. The shipped files are never touched."""
    counter = itertools.count()

    def make(base: str = "baseline", **overrides: dict[str, Any]) -> Path:
        target = tmp_path / f"bundle-{next(counter)}" / base
        shutil.copytree(BUNDLES / base, target)
        shutil.copy(BUNDLES / "gates.yaml", target.parent / "gates.yaml")
        for name, patch in overrides.items():
            path = target.parent / "gates.yaml" if name == "gates" else target / f"{name}.yaml"
            data = yaml.safe_load(path.read_text())
            _merge(data, patch)
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return target

    return make


@pytest.fixture
def policies_copy(make_bundle: MakeBundle) -> Path:
    return make_bundle("baseline")


EXECUTIONS = {
    "threads-small-chunks": Execution(scheduler="threads", country_batch=5, sites_per_task=2_000, band_shards=1),
    "sync-big-chunks": Execution(scheduler="synchronous", country_batch=200, band_shards=4),
    "processes-2": Execution(scheduler="processes", workers=2, country_batch=7),
    "distributed-1": Execution(scheduler="distributed", workers=1, country_batch=11),
    "distributed-2": Execution(scheduler="distributed", workers=2, country_batch=3, band_shards=3),
}


@pytest.fixture(params=list(EXECUTIONS.values()), ids=list(EXECUTIONS))
def execution(request: pytest.FixtureRequest) -> Execution:
    """Every scheduler and task size the engine must give identical bytes on."""
    return request.param
