"""S0's catalogue check, streamed: the same verdict and the same offending row whatever the
batch size, for catalogues whose pairs lie whole in one batch or scattered over many."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from seg1b_dask.errors import Seg1BError
from seg1b_dask.io import catalogue

KNOWN = frozenset({"DE", "FR", "GB", "US"})
TOKENS = {"seed": 42}


def _catalogue(g: np.random.Generator, merchants: int) -> dict[str, np.ndarray]:
    """A valid catalogue: per merchant one home and 1–3 countries of 1–6 outlets each."""
    codes = np.array(sorted(KNOWN))
    cols: dict[str, list] = {k: [] for k in catalogue.REQUIRED}
    for m in range(merchants):
        home = codes[g.integers(len(codes))]
        for country in g.choice(codes, size=g.integers(1, 4), replace=False):
            n = int(g.integers(1, 7))
            cols["merchant_id"] += [1000 + m] * n
            cols["home_country_iso"] += [home] * n
            cols["legal_country_iso"] += [country] * n
            cols["site_order"] += list(range(1, n + 1))
            cols["final_country_outlet_count"] += [n] * n
    return {k: np.asarray(v) for k, v in cols.items()}


def _write(path: Path, cols: dict[str, np.ndarray], order: np.ndarray) -> Path:
    table = pa.table({k: pa.array(v[order], catalogue.REQUIRED[k]) for k, v in cols.items()})
    pq.write_table(table.append_column("seed", pa.array(np.full(len(order), 42))), path, row_group_size=37)
    return path


def _verdict(path: Path, batch: int) -> tuple[str, str] | int:
    try:
        return catalogue.validate_catalogue(path, KNOWN, TOKENS, batch_outlets=batch)
    except Seg1BError as err:
        return err.code, err.key


FAULTS = ["none", "duplicate", "gap", "count", "home", "iso", "zero"]


@settings(max_examples=examples(30), deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(FAULTS), st.booleans())
def test_the_verdict_and_its_row_do_not_depend_on_the_batch_size(
    tmp_path_factory: pytest.TempPathFactory, seed: int, fault: str, scattered: bool
) -> None:
    g = np.random.default_rng(seed)
    cols = _catalogue(g, 30)
    n = len(cols["merchant_id"])
    row = int(g.integers(n))
    if fault == "duplicate":  # another row's key, in a row of the same pair
        same = np.flatnonzero(
            (cols["merchant_id"] == cols["merchant_id"][row])
            & (cols["legal_country_iso"] == cols["legal_country_iso"][row])
        )
        if len(same) > 1:
            cols["site_order"][same[-1]] = cols["site_order"][same[0]]
    elif fault == "gap":
        cols["site_order"][row] += 100
    elif fault == "count":
        cols["final_country_outlet_count"][row] += 1
    elif fault == "home":
        cols["home_country_iso"][row] = next(c for c in sorted(KNOWN) if c != cols["home_country_iso"][row])
        if (cols["merchant_id"] == cols["merchant_id"][row]).sum() == 1:
            fault = "none"  # a merchant of one outlet has one home whatever it is
    elif fault == "iso":
        cols["legal_country_iso"] = cols["legal_country_iso"].astype("U2")
        cols["legal_country_iso"][row] = "ZZ"
    elif fault == "zero":
        cols["site_order"][row] = 0
    order = g.permutation(n) if scattered else np.arange(n)
    path = _write(tmp_path_factory.mktemp("cat") / "catalogue.parquet", cols, order)
    verdicts = {batch: _verdict(path, batch) for batch in (1, 7, 50, n)}
    assert len(set(verdicts.values())) == 1, verdicts  # code and row: the same at every batch size
    whole = verdicts[n]
    if fault == "none" or (fault == "duplicate" and whole == n):
        assert whole == n
    else:
        assert isinstance(whole, tuple)
        assert (
            whole[0]
            == {
                "duplicate": "E_DUPLICATE_KEY",
                "gap": "E_SITE_ORDER_GAP",
                "count": "E_SITE_ORDER_GAP",
                "home": "E_UPSTREAM_SCHEMA",
                "iso": "E_UNKNOWN_ISO",
                "zero": "E_NONPOSITIVE_COUNT",
            }[fault]
        )
    if fault in ("iso", "zero"):  # a row-by-row fault names its row in the file
        assert whole[1].startswith(f"row {int(np.flatnonzero(order == row)[0])}")


def test_a_pair_split_over_batches_in_order_is_checked_from_its_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pieces that continue each other prove the pair exact: nothing is read twice."""
    cols = _catalogue(np.random.default_rng(1), 200)
    path = _write(tmp_path / "catalogue.parquet", cols, np.arange(len(cols["merchant_id"])))
    monkeypatch.setattr(catalogue, "check_rows", lambda rows, path: pytest.fail("read again"))
    assert catalogue.validate_catalogue(path, KNOWN, TOKENS, batch_outlets=5) == len(cols["merchant_id"])


def test_a_repeat_in_another_batch_is_named_by_its_row(tmp_path: Path) -> None:
    cols = _catalogue(np.random.default_rng(2), 40)
    n = len(cols["merchant_id"])
    extended = {k: np.r_[v, v[3:4]] for k, v in cols.items()}  # row 3 again, at the end
    path = _write(tmp_path / "catalogue.parquet", extended, np.arange(n + 1))
    assert _verdict(path, 10) == ("E_DUPLICATE_KEY", f"row {n}")
    assert _verdict(path, n + 1) == ("E_DUPLICATE_KEY", f"row {n}")


def _rows(tmp_path: Path, rows: list[tuple[int, str, str, int, int]]) -> Path:
    names = ["merchant_id", "legal_country_iso", "home_country_iso", "site_order", "final_country_outlet_count"]
    cols = {name: np.asarray([r[i] for r in rows]) for i, name in enumerate(names)}
    return _write(tmp_path / "catalogue.parquet", cols, np.arange(len(rows)))


@pytest.mark.parametrize("batch", [1, 2, 3, 100])
def test_a_key_repeated_across_batches_names_the_row_a_whole_table_check_names(tmp_path: Path, batch: int) -> None:
    path = _rows(tmp_path, [(1, "DE", "DE", 1, 1), (2, "DE", "DE", 1, 1), (1, "DE", "DE", 1, 1), (1, "DE", "DE", 1, 1)])
    assert _verdict(path, batch) == ("E_DUPLICATE_KEY", "row 2")  # the second copy in file order


@pytest.mark.parametrize("batch", [1, 2, 100])
def test_the_merchant_named_for_two_homes_is_the_first_in_the_file(tmp_path: Path, batch: int) -> None:
    path = _rows(tmp_path, [(5, "DE", "DE", 1, 1), (3, "FR", "FR", 1, 1), (5, "FR", "FR", 1, 1), (3, "GB", "GB", 1, 1)])
    assert _verdict(path, batch) == ("E_UPSTREAM_SCHEMA", "merchant_id 5")
