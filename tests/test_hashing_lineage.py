from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import MakeBundle

from seg1b_dask.errors import Seg1BError
from seg1b_dask.io.hashing import FLAG_NAME, seal_bundle, verify_bundle
from seg1b_dask.io.lineage import Tokens, check_tokens, republish, safe_join
from seg1b_dask.io.refdata import REGIONS, refdata_version
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.policies.bundle import bundle_from_canonical, load_bundle


def _bundle(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.bin").write_bytes(b"xx")
    (root / "b.txt").write_text("b")
    seal_bundle(root, {"seed": 1})
    return root


def test_flag_is_sha256_of_listed_files_in_path_order(tmp_path: Path) -> None:
    import hashlib

    root = _bundle(tmp_path / "bundle")
    index, flag = verify_bundle(root)
    paths = sorted(e["path"] for e in index["files"])
    assert paths == ["a/x.bin", "b.txt", "index.json"]
    assert flag == hashlib.sha256(b"".join((root / p).read_bytes() for p in paths)).hexdigest()
    assert (root / FLAG_NAME).read_text().strip() == f"sha256_hex = {flag}"


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda r: (r / FLAG_NAME).unlink(), "E_BUNDLE_FLAG_MISSING"),
        (lambda r: (r / "b.txt").write_text("B"), "E_BUNDLE_FLAG_MISMATCH"),
        (lambda r: (r / "extra.txt").write_text("?"), "E_BUNDLE_INDEX"),
        (lambda r: (r / "a" / "x.bin").unlink(), "E_BUNDLE_INDEX"),
    ],
)
def test_tampered_bundle_is_refused(tmp_path: Path, tamper, code: str) -> None:
    root = _bundle(tmp_path / "bundle")
    tamper(root)
    with pytest.raises(Seg1BError) as err:
        verify_bundle(root)
    assert err.value.code == code
    assert err.value.file is not None


@pytest.mark.parametrize("entry", [1, "", "./b.txt", "a//x.bin"])
def test_malformed_index_entries_are_refused(tmp_path: Path, entry: object) -> None:
    import json

    root = _bundle(tmp_path / "bundle")
    index = json.loads((root / "index.json").read_text())
    index["files"].append({"path": entry})
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(Seg1BError) as err:
        verify_bundle(root)
    assert err.value.code == "E_BUNDLE_INDEX"


def test_binary_flag_is_refused_not_crashed(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "bundle")
    (root / FLAG_NAME).write_bytes(b"\xff\xfe")
    with pytest.raises(Seg1BError) as err:
        verify_bundle(root)
    assert err.value.code == "E_BUNDLE_FLAG_MISMATCH"


def _publish(final: Path, tokens: dict[str, object], write) -> None:  # noqa: ANN001
    with RunRoot(final.parent.parent).staged(final, "ds", tokens) as tmp:
        write(tmp)


def test_publish_is_atomic_and_write_once(tmp_path: Path) -> None:
    final = tmp_path / "ds" / "parameter_hash=abc"
    _publish(final, {"parameter_hash": "abc"}, lambda d: (d / "x").write_text("1"))
    _publish(final, {"parameter_hash": "abc"}, lambda d: (d / "x").write_text("1"))  # identical: no-op
    with pytest.raises(Seg1BError) as err:
        _publish(final, {"parameter_hash": "abc"}, lambda d: (d / "x").write_text("2"))
    assert err.value.code == "E_PUBLISH_CONFLICT"
    assert (final / "x").read_text() == "1"

    def crash(d: Path) -> None:
        (d / "half").write_text("partial")
        raise RuntimeError("boom")

    other = tmp_path / "ds" / "parameter_hash=def"
    with pytest.raises(RuntimeError):
        _publish(other, {"parameter_hash": "def"}, crash)
    assert not other.exists()
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["parameter_hash=abc"]


def test_republish_keeps_bytes_and_retokens(tmp_path: Path) -> None:
    tokens = Tokens(7, "p1", "m1")
    src = RunRoot(tmp_path).dataset("ds", tokens.for_scope("plan"))
    _publish(src, tokens.for_scope("plan"), lambda d: (d / "x").write_text("1"))
    t2 = Tokens(7, "p2", "m2")
    dst = republish(src, RunRoot(tmp_path).dataset("ds", t2.for_scope("plan")), "ds", t2.for_scope("plan"))
    assert (dst / "x").read_bytes() == (src / "x").read_bytes()
    check_tokens(dst)
    (dst / "_manifest.json").write_text((src / "_manifest.json").read_text())
    with pytest.raises(Seg1BError) as err:
        check_tokens(dst)
    assert err.value.code == "E_TOKEN_MISMATCH"


def test_safe_join_refuses_escape(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "runs/a") == (tmp_path / "runs" / "a").resolve()
    with pytest.raises(Seg1BError) as err:
        safe_join(tmp_path, "../elsewhere")
    assert err.value.code == "E_PATH_ESCAPE"


def test_a_sealed_bundle_is_the_loaded_bundle_in_every_order(make_bundle: MakeBundle) -> None:
    """A run reproduced from its sealed (sorted JSON) policies iterates every mapping in the
    same order as the YAML-loaded bundle did: floors apply in sequence, gates print in order.
    The YAML here lists the regions in reverse."""
    policies = make_bundle("remediation")
    gates_file = policies.parent / "gates.yaml"
    gates = yaml.safe_load(gates_file.read_text())
    gates["region_floor_share"] = dict(reversed(gates["region_floor_share"].items()))
    gates_file.write_text(yaml.safe_dump(gates, sort_keys=False))
    loaded = load_bundle(policies, refdata_version())
    sealed = bundle_from_canonical(loaded.name, loaded.canonical(), refdata_version())
    assert sealed.parameter_hash == loaded.parameter_hash
    assert list(sealed.gates.region_floor_share) == list(loaded.gates.region_floor_share) == list(REGIONS)
    mass = sealed.s2_tile_weights.tile_weights.country_mass  # type: ignore[union-attr]
    assert list(mass.region_floor_share) == list(REGIONS)
