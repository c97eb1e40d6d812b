"""Every user mistake is refused with a coded error naming the file and key or row, and
nothing is published (DESIGN §11)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import MakeBundle

from seg1b_dask.chain.runner import ensure_standin, run_seed
from seg1b_dask.cli import main
from seg1b_dask.errors import Seg1BError
from seg1b_dask.io.hashing import FLAG_NAME, seal_bundle
from seg1b_dask.io.package import BUNDLES
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.upstream import CATALOGUE
from seg1b_dask.policies.bundle import load_bundle


def _rewrite_catalogue(bundle: Path, edit) -> None:
    path = bundle / CATALOGUE
    table = edit(pq.read_table(path))
    pq.write_table(table, path)
    (bundle / FLAG_NAME).unlink()
    seal_bundle(bundle, {"segment": "1A", "seed": 42, "manifest_fingerprint": "x"})


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(
        table.schema.get_field_index(column), column, pa.array(values, table.schema.field(column).type)
    )


def _refused(
    tmp_path: Path, bundle: Path, code: str, policies: Path | None = None, allowed: tuple[str, ...] = ()
) -> Seg1BError:
    root = tmp_path / "root"
    kwargs = {"policies": policies} if policies else {}
    with pytest.raises(Seg1BError) as err:
        run_seed(root=root, seed=42, upstream=bundle, **kwargs)
    assert err.value.code == code, str(err.value)
    assert err.value.file, "the error names the file"
    published = [p for p in (root / "data").rglob("_manifest.json")] if (root / "data").exists() else []
    plan = [p for p in published if "seed=" in str(p) and not any(a in str(p) for a in allowed)]
    assert not plan, f"nothing seeded may be published, found {plan[:1]}"
    assert not list(root.rglob("*.tmp-*")), "no staging folder is left behind"
    return err.value


def test_missing_flag(tmp_path: Path, bundle_copy: Path) -> None:
    (bundle_copy / FLAG_NAME).unlink()
    _refused(tmp_path, bundle_copy, "E_BUNDLE_FLAG_MISSING")


def test_tampered_flag(tmp_path: Path, bundle_copy: Path) -> None:
    path = bundle_copy / CATALOGUE
    pq.write_table(_set(pq.read_table(path), "site_order", 0, 1), path)  # same values, other bytes
    (bundle_copy / FLAG_NAME).write_text("sha256_hex = " + "0" * 64 + "\n")
    _refused(tmp_path, bundle_copy, "E_BUNDLE_FLAG_MISMATCH")


def test_unknown_iso(tmp_path: Path, bundle_copy: Path) -> None:
    _rewrite_catalogue(bundle_copy, lambda t: _set(t, "legal_country_iso", 5, "ZZ"))
    err = _refused(tmp_path, bundle_copy, "E_UNKNOWN_ISO")
    assert "row 5" in err.key and "ZZ" in str(err)


def test_site_order_gap(tmp_path: Path, bundle_copy: Path) -> None:
    _rewrite_catalogue(bundle_copy, lambda t: _set(t, "site_order", 1, 1_000_000))  # beyond any pair size
    err = _refused(tmp_path, bundle_copy, "E_SITE_ORDER_GAP")
    assert "merchant_id" in err.key


def test_nonpositive_count(tmp_path: Path, bundle_copy: Path) -> None:
    _rewrite_catalogue(bundle_copy, lambda t: _set(t, "final_country_outlet_count", 3, 0))
    err = _refused(tmp_path, bundle_copy, "E_NONPOSITIVE_COUNT")
    assert err.key == "row 3"


def test_duplicate_key(tmp_path: Path, bundle_copy: Path) -> None:
    def dup(t: pa.Table) -> pa.Table:
        return pa.concat_tables([t, t.slice(10, 1)])

    _rewrite_catalogue(bundle_copy, dup)
    _refused(tmp_path, bundle_copy, "E_DUPLICATE_KEY")


def test_mixed_tokens(tmp_path: Path, bundle_copy: Path) -> None:
    def tokens(t: pa.Table) -> pa.Table:
        seeds = np.full(t.num_rows, 42)
        seeds[7] = 43
        return t.append_column("seed", pa.array(seeds))

    _rewrite_catalogue(bundle_copy, tokens)
    err = _refused(tmp_path, bundle_copy, "E_TOKEN_MISMATCH")
    assert err.key == "seed"


def test_bundle_for_another_seed(tmp_path: Path, bundle42: Path) -> None:
    with pytest.raises(Seg1BError) as err:
        run_seed(root=tmp_path / "root", seed=7, upstream=bundle42)
    assert err.value.code == "E_TOKEN_MISMATCH"


@pytest.mark.parametrize(
    ("file", "patch", "code", "key"),
    [
        ("s4_alloc_plan", {"surprise": 1}, "E_POLICY_UNKNOWN_KEY", "surprise"),
        (
            "s4_alloc_plan",
            {"tile_allocation": {"max_tile_shares": 1.0}},
            "E_POLICY_UNKNOWN_KEY",
            "tile_allocation.max_tile_shares",
        ),
        ("s6_jitter", {"jitter": {"max_attempts": "64"}}, "E_POLICY_INVALID", "jitter.max_attempts"),
        ("grid", {"resolution_arcsec": 7}, "E_POLICY_INVALID", "resolution_arcsec"),
        ("grid", {"chunk_cols": 700}, "E_POLICY_INVALID", "chunk_cols"),  # 4 320 columns at 5′: must divide them
    ],
)
def test_policy_schema_is_strict(make_bundle: MakeBundle, file: str, patch: dict, code: str, key: str) -> None:
    with pytest.raises(Seg1BError) as err:
        load_bundle(make_bundle(**{file: patch}), "v")
    assert (err.value.code, err.value.key) == (code, key)
    assert err.value.file.endswith(f"{file}.yaml")


def test_a_chunk_wider_than_the_row_is_the_row(make_bundle: MakeBundle) -> None:
    assert load_bundle(make_bundle(grid={"resolution_arcsec": 1800, "chunk_cols": 1440}), "v").grid.chunk_cols == 1440


@pytest.mark.parametrize(
    ("file", "patch"),
    [
        ("s3_requirements", {"denylist_iso": ["AQ"]}),
        ("s6_jitter", {"jitter": {"max_attempts": 65}}),
        ("s8_egress", {"rows_per_part": 999_999}),
        ("gates", {"country_gini_max": {"B": 0.67}}),
    ],
)
def test_every_policy_file_moves_parameter_hash(make_bundle: MakeBundle, file: str, patch: dict) -> None:
    base = load_bundle(make_bundle(), "v").parameter_hash
    assert load_bundle(make_bundle(), "v").parameter_hash == base  # a copy is the same bundle
    assert load_bundle(make_bundle(**{file: patch}), "v").parameter_hash != base
    assert load_bundle(make_bundle(), "v2").parameter_hash != base  # so is another refdata version


def test_cli_prints_one_coded_line(tmp_path: Path, bundle_copy: Path) -> None:
    (bundle_copy / FLAG_NAME).unlink()
    result = CliRunner().invoke(main, ["run", "--root", str(tmp_path / "r"), "--upstream", str(bundle_copy), "--quiet"])
    assert result.exit_code == 2
    assert "E_BUNDLE_FLAG_MISSING" in result.output and "Traceback" not in result.output


def test_denylisted_country_is_refused(tmp_path: Path, bundle42: Path, make_bundle: MakeBundle) -> None:
    policies = make_bundle(s3_requirements={"denylist_iso": ["DE"]})
    # The gate passed (its receipt is a complete record); nothing from S3 on is published.
    err = _refused(tmp_path, bundle42, "E_DENYLISTED", policies=policies, allowed=("s0_gate_receipt",))
    assert "DE" in err.key


# -- policies: a missing folder ------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "certify", "feasibility"])
def test_a_missing_policy_folder_is_named_and_creates_no_root(tmp_path: Path, command: str) -> None:
    missing, root = tmp_path / "no-such-bundle", tmp_path / "root"
    code, out = _cli(command, "--policies", str(missing), "--root", str(root))
    assert code == 2 and out.count("\n") == 1, out
    assert out.startswith("error: E_POLICY_MISSING: the policy bundle folder is missing"), out
    assert f"[file: {missing}]" in out and "grid.yaml" not in out
    assert "baseline, remediation, remediation_b in " in out  # what to pass instead
    assert not root.exists() and "run root" not in out


def test_a_folder_of_bundles_is_not_a_bundle(tmp_path: Path) -> None:
    code, out = _cli("run", "--policies", str(BUNDLES), "--root", str(tmp_path / "root"))
    assert code == 2 and "E_POLICY_MISSING: the folder holds no policy file" in out, out
    assert not (tmp_path / "root").exists()


# -- the cached 1A stand-in ----------------------------------------------------------------


def test_a_damaged_standin_names_the_folder_that_regenerates_it(tmp_path: Path) -> None:
    """S0 verifies the cached stand-in on every run; a damaged one keeps its code and says
    which folder to delete (a folder left without its flag is refused before any run)."""
    root = RunRoot.open(tmp_path / "root")
    standin = ensure_standin(root, 42)
    flag = (standin / FLAG_NAME).read_text()
    (standin / FLAG_NAME).write_text(f"sha256_hex = {'0' * 64}\n")
    with pytest.raises(Seg1BError) as err:
        run_seed(root=root, seed=42)
    assert err.value.code == "E_BUNDLE_FLAG_MISMATCH"
    code, out = _cli("run", "--root", str(root.path), "--quiet")
    assert code == 2 and out.count("error:") == 1, out
    line = out.splitlines()[-1]
    assert line.startswith("error: E_BUNDLE_FLAG_MISMATCH: flag says 0000"), line
    assert f"delete its folder {standin} and run again to regenerate it" in line, line
    assert f"[file: {standin / FLAG_NAME}]" in line
    (standin / FLAG_NAME).write_text(flag)  # the intact flag: reused as it is
    assert ensure_standin(root, 42) == standin
    index = (standin / "index.json").read_bytes()
    (standin / "index.json").unlink()
    with pytest.raises(Seg1BError, match=f"delete its folder {re.escape(str(standin))} .*regenerate it") as err:
        run_seed(root=root, seed=42)
    assert err.value.code == "E_BUNDLE_INDEX"
    (standin / FLAG_NAME).unlink()
    with pytest.raises(Seg1BError, match=f"delete its folder {re.escape(str(standin))} .*regenerate it") as err:
        ensure_standin(root, 42)
    assert err.value.code == "E_BUNDLE_FLAG_MISSING"
    (standin / FLAG_NAME).write_text(flag)
    (standin / "index.json").write_bytes(index)
    shutil.rmtree(standin)  # as the message says: deleted, it is written again
    assert (ensure_standin(root, 42) / FLAG_NAME).read_text() == flag
