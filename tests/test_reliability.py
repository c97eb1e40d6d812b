"""A run root that never lies: locks, verified cache reuse, atomic pins and packs, cleanup,
and one coded line (never a traceback) for every hostile input or environment."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
from click.testing import CliRunner
from conftest import MakeBundle, SharedRun

from seg1b_dask import __version__
from seg1b_dask.chain import registry
from seg1b_dask.chain.runner import BASELINE_POLICIES, RunResult, run_seed
from seg1b_dask.cli import main
from seg1b_dask.engine.execution import Execution, compute, executing
from seg1b_dask.errors import Code, EnvironmentFault, InputError, InternalError, Seg1BError
from seg1b_dask.grading import scoring
from seg1b_dask.io import discipline, grids
from seg1b_dask.io.grids import SITE_JITTER, TILE_GRID, TILE_WEIGHTS
from seg1b_dask.io.hashing import FLAG_NAME, read_flag, seal_bundle
from seg1b_dask.io.lineage import read_manifest
from seg1b_dask.io.runroot import RunRoot
from seg1b_dask.io.upstream import CATALOGUE
from seg1b_dask.lanes import certify as lanes
from seg1b_dask.lanes import fast
from seg1b_dask.lanes import score as scorer


@pytest.fixture(scope="module")
def warm(seed42_warm: SharedRun) -> RunResult:
    """One baseline run of seed 42 (the session's, read-only): its root is copied before any test damages it."""
    return seed42_warm.result


@pytest.fixture
def root(seed42_warm: SharedRun, tmp_path: Path) -> Path:
    return seed42_warm.copy(tmp_path / "root").root


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _digests(result: RunResult) -> dict[str, str]:
    return {name: read_manifest(path)["content_sha256"] for name, path in result.outputs.items()}


# -- structure ---------------------------------------------------------------------------


def test_grids_open_with_xarray_and_match_the_engine_readers(warm: RunResult) -> None:
    grid = xr.open_zarr(warm.outputs["tile_grid"] / TILE_GRID.STORE)
    weights = xr.open_zarr(warm.outputs["tile_weights"] / TILE_WEIGHTS.STORE)
    for ds in (grid, weights):
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
        assert ds.sizes == {"lat": 2160, "lon": 4320}
        assert float(ds["lat"][0]) == pytest.approx(90 - 1 / 24) and float(ds["lon"][0]) == pytest.approx(-180 + 1 / 24)
    # Germany near 51°N 10°E: xarray's label lookup and the engine's reader see the same cell.
    cell = grid["country_id"].sel(lat=51.0, lon=10.0, method="nearest")
    row, col = int(np.argmin(np.abs(grid["lat"].values - 51.0))), int(np.argmin(np.abs(grid["lon"].values - 10.0)))
    tile_ids, tile_weight = TILE_GRID.country_cells(warm.outputs["tile_grid"], warm.outputs["tile_weights"], int(cell))
    at = np.searchsorted(tile_ids, row * 4320 + col)
    assert int(cell) > 0 and tile_ids[at] == row * 4320 + col
    assert int(weights["tile_weight"][row, col]) == int(tile_weight[at]) > 0
    assert grid.attrs["policy_sha256"] and weights.attrs["mode"] == "legacy"
    jitter = xr.open_zarr(warm.outputs["s6_site_jitter"] / SITE_JITTER.STORE)
    assert jitter.sizes["site"] == 31257 and jitter["lon_deg"].dtype == np.float64


def test_the_chunk_index_gives_every_country_exactly_its_cells(warm: RunResult) -> None:
    """Reading a country chunk by chunk from S1's index gives the same cells and weights as
    scanning the whole grid (the old bounding-box reader), for every country; with every
    cell whatever its weight for the collapse sentinel."""
    cid = np.asarray(TILE_GRID.array(warm.outputs["tile_grid"])[:, :])
    weight = np.asarray(TILE_WEIGHTS.array(warm.outputs["tile_weights"])[:, :])
    live = np.flatnonzero(((cid > 0) & (weight > 0)).ravel())
    by_country = np.split(
        live[np.argsort(cid.ravel()[live], kind="stable")], np.cumsum(np.bincount(cid.ravel()[live]))[:-1]
    )
    chunk_rows, chunk_cols = TILE_GRID.chunk_shape(warm.outputs["tile_grid"])
    assert (chunk_rows, chunk_cols) == (60, 1080)
    checked = 0
    for country_id, expected in enumerate(by_country):
        if country_id == 0 or not len(expected):
            continue
        ids, w = TILE_GRID.country_cells(warm.outputs["tile_grid"], warm.outputs["tile_weights"], country_id)
        assert np.array_equal(ids, expected) and np.array_equal(w, weight.ravel()[expected])
        assert not ids.flags.writeable and not w.flags.writeable  # kept for the next reader of the country
        every = np.flatnonzero(cid.ravel() == country_id)
        assert np.array_equal(TILE_GRID.country_tiles(warm.outputs["tile_grid"], country_id), every)
        checked += 1
    assert checked > 200


def test_the_country_cells_kept_stay_within_their_byte_bound() -> None:
    """Least recently read first out; an entry above the bound is handed back, never kept."""
    cache = grids._CellsCache(max_bytes=3 * 160)
    cells = {k: (np.arange(10, dtype=np.int64) + k, np.ones(10, dtype=np.uint64)) for k in range(4)}
    for k in range(3):
        cache.put(("g", "w", k), cells[k])
    assert cache.get(("g", "w", 0)) is cells[0]  # now the most recent
    cache.put(("g", "w", 3), cells[3])
    assert cache.get(("g", "w", 1)) is None and all(cache.get(("g", "w", k)) is cells[k] for k in (0, 2, 3))
    big = (np.arange(100, dtype=np.int64), np.ones(100, dtype=np.uint64))
    assert cache.put(("g", "w", 9), big) is big and cache.get(("g", "w", 9)) is None
    assert all(cache.get(("g", "w", k)) is cells[k] for k in (0, 2, 3))
    with pytest.raises(ValueError, match="read-only"):
        cells[0][0][0] = 1


def _write_after_a_second(path: str) -> int:
    time.sleep(1.0)
    Path(path).write_text("done")
    return 1


def _fail_at_once() -> int:
    raise ValueError("this task failed")


def test_a_failed_task_lets_the_running_ones_end_on_the_processes_pool(tmp_path: Path) -> None:
    """The processes scheduler's pool serves the whole run; a task's error still reaches the
    caller only after the tasks already running have ended (the caller then removes their
    staging folder), and later computes still run."""
    written = tmp_path / "written"
    # one task per submission, so that both run at once (dask sends ready tasks six at a time)
    with dask.config.set({"chunksize": 1}), executing(Execution(scheduler="processes", workers=2), tmp_path):
        with pytest.raises(ValueError, match="this task failed"):
            compute([dask.delayed(_write_after_a_second)(str(written)), dask.delayed(_fail_at_once)()])
        assert written.read_text() == "done"
        assert compute([dask.delayed(_write_after_a_second)(str(tmp_path / "later"))]) == [1]


def test_registry_is_the_single_source(tmp_path: Path) -> None:
    assert [s.id for s in registry.STATES] == [f"S{i}" for i in range(10)]
    assert all(callable(s.run) for s in registry.STATES)
    s1 = {p.name for p in registry.code_files(registry.BY_ID["S1"].module)}
    s9 = {p.name for p in registry.code_files(registry.BY_ID["S9"].module)}
    assert "scoring.py" in s9 and "scoring.py" not in s1 and "cli.py" not in s9
    design = (Path(__file__).parents[1] / "docs" / "design.md").read_text()
    assert registry.state_table() in design, (
        "docs/design.md's state table is generated: python3 -m seg1b_dask.chain.registry"
    )


def test_error_families_and_exit_codes() -> None:
    assert isinstance(Seg1BError(Code.E_UNKNOWN_ISO, "x"), InputError)
    assert isinstance(Seg1BError(Code.E_DISK_FULL, "x"), EnvironmentFault)
    bug = Seg1BError(Code.E_INTERNAL, "x")
    assert isinstance(bug, InternalError) and bug.exit_code == 3 and "bug" in str(bug)


def test_an_unexpected_failure_is_a_coded_bug_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(fast, "fast_lane", broken)
    code, out = _cli("run", "--root", str(tmp_path), "--quiet")
    assert code == 3 and "E_INTERNAL: ZeroDivisionError: boom" in out


# -- the run root ------------------------------------------------------------------------


@pytest.mark.slow
def test_prune_is_refused_while_a_run_is_in_flight(root: Path) -> None:
    """A run in another process holds the root; prune refuses; the run completes intact.
    (Seed 7: nothing of it is cached yet, so its states compute.) The run is held in flight
    (stopped) from its first state line until prune has answered."""
    run = subprocess.Popen(
        [sys.executable, "-m", "seg1b_dask.cli", "run", "--root", str(root), "--policies", str(BASELINE_POLICIES),
         "--seed", "7", "--country-batch", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    in_flight = threading.Event()

    def read() -> None:
        assert run.stdout is not None
        for line in run.stdout:
            lines.append(line)
            if line.startswith("["):  # "[k/N] state": printed from inside the run, under the root's lock
                in_flight.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert in_flight.wait(timeout=300), "".join(lines)
        run.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(Seg1BError) as err:
                discipline.prune(root)
        finally:
            run.send_signal(signal.SIGCONT)
        assert err.value.code == Code.E_ROOT_BUSY
        assert run.wait(timeout=300) == 0, "".join(lines)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=60)
        reader.join(timeout=60)
    out = "".join(lines)
    assert "validation: PASS" in out, out
    runs = sorted(p for p in (root / "runs").iterdir() if (p / "run.json").is_file())
    meta = json.loads((runs[-1] / "run.json").read_text())
    assert meta["seed"] == 7
    for rel in meta["outputs"].values():
        assert (root / rel / "_manifest.json").is_file()


def test_a_run_waits_for_prune_then_refuses(root: Path) -> None:
    rr = RunRoot.open(root)
    held, release = threading.Event(), threading.Event()

    def prune_holder() -> None:
        with rr.exclusive():
            held.set()
            release.wait(60)

    t = threading.Thread(target=prune_holder)
    t.start()
    assert held.wait(60), "the prune holder took the lock"
    try:
        with pytest.raises(Seg1BError) as err, rr.shared(wait=0.2):
            pass
        assert err.value.code == Code.E_ROOT_BUSY
    finally:
        release.set()
        t.join()
    with rr.shared(wait=1):
        pass


def test_prune_removes_staging_left_by_a_killed_process(root: Path) -> None:
    leftovers = [
        root / "data" / "site_locations" / ".seed=42.tmp-999-1",
        root / "runs" / ".20260101T000000Z-s42-x.tmp-999-1",
        root / "certification" / ".pack.tmp-999",
    ]
    for path in leftovers:
        path.mkdir(parents=True)
        (path / "half.parquet").write_bytes(b"x")
    out = discipline.prune(root)
    assert len(out["removed_staging"]) == 3 and not any(p.exists() for p in leftovers)


@pytest.mark.parametrize("target", ["tile_weights", "s4_alloc_plan"])
def test_damaged_cache_entries_are_recomputed_not_reused(root: Path, warm: RunResult, target: str) -> None:
    folder = root / warm.outputs[target].relative_to(warm.run_dir.parent.parent)
    victim = max(
        (p for p in folder.rglob("*") if p.is_file() and p.name != "_manifest.json"), key=lambda p: p.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    again = run_seed(root=root, seed=42, policies=BASELINE_POLICIES)
    record = next(s for s in again.states if target in registry.BY_ID[s.id].writes)
    assert not record.reused and "failed verification" in record.note
    assert _digests(again) == _digests(warm)


def test_an_interrupted_pin_leaves_no_pin(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scorecard is written before the pin: Ctrl-C between them leaves no pin pointing
    at a run without a scorecard; a pin left that way by an older run is completed."""
    pin_file = RunRoot(root).pin(42, 300, read_flag(RunRoot(root).upstream(42)))
    run_dir = next(p for p in (root / "runs").iterdir() if (p / "run.json").is_file())
    assert not pin_file.exists()

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(scoring, "write_scorecard", interrupted)
        with pytest.raises(KeyboardInterrupt):
            scorer.score_run(root, run_dir, pin_as_baseline=True)
    assert not pin_file.exists()
    discipline.pin_baseline(root, run_dir, 16.0)  # the old failure mode: a pin, no scorecard
    pin = scorer.pin_baseline_run(root, 42, Execution())
    assert pin["run_id"] == run_dir.name and (run_dir / "scorecard" / "scorecard.json").is_file()


def test_an_interrupted_certification_leaves_no_pack(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(run_root: RunRoot, folder: Path, *args: object) -> None:
        (folder / "pack.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(lanes, "_certify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lanes.certify(root, [42], BASELINE_POLICIES)
    assert not any((root / "certification").iterdir())


# -- hostile input and environment: one coded line, exit 2 ------------------------------


def _rewrite(bundle: Path, table: pa.Table) -> None:
    pq.write_table(table, bundle / CATALOGUE)
    (bundle / FLAG_NAME).unlink()
    (bundle / "index.json").unlink()
    seal_bundle(bundle, {"segment": "1A", "seed": 42, "manifest_fingerprint": "x"})


def test_cli_refusals(tmp_path: Path, bundle_copy: Path, make_bundle: MakeBundle) -> None:
    r = str(tmp_path / "r")
    tiny_quantum = {"area_quantum_m2": 1e-300}
    assert _cli("--version") == (0, f"seg1b, version {__version__}\n")
    cases = [
        (["certify", "--root", r, "--seeds", "42,abc"], "E_BAD_OPTION", "--seeds abc"),
        (["certify", "--root", r, "--seeds", "42,18446744073709551616"], "E_BAD_OPTION", "--seeds"),
        (["run", "--root", r, "--scheduler", "bogus"], "E_BAD_OPTION", "--scheduler"),
        (["run", "--root", r, "--policies", str(make_bundle(grid={"eligibility": {"min_population": 10**12}}))],
         "E_NO_ELIGIBLE_COUNTRY", "eligibility.min_population"),
        (["run", "--root", r, "--policies", str(make_bundle(s2_tile_weights={"tile_weights": tiny_quantum}))],
         "E_POLICY_INVALID", "area_quantum_m2"),
        (["run", "--root", r, "--policies", str(make_bundle(gates={"bootstrap_replicates": 10**8}))],
         "E_POLICY_INVALID", "bootstrap_replicates"),
        (["score", "--root", r], "E_BAD_OPTION", "RUN_REF"),
        (["score", "--root", r, "no-such-run"], "E_UNKNOWN_RUN", "no such run"),
        (["certify", "--root", r, "--seeds", "1,,2"], "E_BAD_OPTION", "none empty"),
        (["certify", "--root", r, "--seeds", ","], "E_BAD_OPTION", "--seeds"),
        (["run", "--root", r, "--policies", str(make_bundle(s6_jitter={"jitter": {"max_attempt": 64}}))],
         "E_POLICY_UNKNOWN_KEY", "did you mean max_attempts?"),
    ]  # fmt: skip
    for args, code, where in cases:
        exit_code, out = _cli(*args)
        assert exit_code == 2 and code in out and where in out, (args, out)
    assert _cli("run", "--root", r, "--seed", "18446744073709551616")[0] == 2  # click's range check
    assert "nn_contraction" in _cli("score", "--explain")[1]


def test_unreachable_scheduler_is_reported_quickly(tmp_path: Path) -> None:
    t = time.perf_counter()
    code, out = _cli("run", "--root", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1", "--quiet")
    assert code == 2 and "E_SCHEDULER_UNREACHABLE" in out and time.perf_counter() - t < 60


def test_a_tls_scheduler_without_client_certificates_is_one_line_at_once(tmp_path: Path) -> None:
    """A tls:// scheduler needs the cluster's CA and a client certificate (Dask's settings,
    from DASK_DISTRIBUTED__COMM__TLS__… or a config file): missing or unreadable, the job says
    which, without waiting out the connect timeout."""
    import dask

    root = str(tmp_path / "r")
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked before the handshake\n")
    settings = {
        "distributed.comm.tls.ca-file": None,
        "distributed.comm.tls.client.cert": None,
        "distributed.comm.tls.client.key": None,
    }
    cases = [
        ({}, "distributed.comm.tls.ca-file", "DASK_DISTRIBUTED__COMM__TLS__CA_FILE"),
        ({"distributed.comm.tls.ca-file": str(ca)}, "distributed.comm.tls.client.cert", "CLIENT__CERT"),
        (
            {"distributed.comm.tls.ca-file": str(ca), "distributed.comm.tls.client.cert": str(tmp_path / "gone.pem")},
            f"[file: {tmp_path / 'gone.pem'}]",
            "[at: DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT]",
        ),
    ]
    for given, named, variable in cases:
        t = time.perf_counter()
        with dask.config.set({**settings, **given}):
            code, out = _cli("certify", "--root", root, "--scheduler", "tls://127.0.0.1:1", "--connect-timeout", "30")
        (line,) = [x for x in out.splitlines() if x.startswith("error:")]
        assert code == 2 and line.startswith("error: E_TLS_CONFIG:") and named in line and variable in line, out
        assert time.perf_counter() - t < 10
    gone = str(tmp_path / "gone-key.pem")  # the scheduler and workers check theirs before Dask starts
    for args in (
        ["scheduler", "--protocol", "tls", "--tls-ca-file", gone],
        ["worker", "--root", root, "tls://h:1", f"--tls-key={gone}"],
    ):
        (tmp_path / "r").mkdir(exist_ok=True)
        code, out = _cli(*args)
        assert code == 2 and "error: E_TLS_CONFIG: cannot read the --tls-" in out and f"[file: {gone}]" in out, out


@pytest.mark.parametrize("damage", ["empty", "missing", "escape"])
def test_hostile_bundles(tmp_path: Path, bundle_copy: Path, damage: str) -> None:
    catalogue = bundle_copy / CATALOGUE
    if damage == "empty":
        _rewrite(bundle_copy, pq.read_table(catalogue).slice(0, 0))
        expected = "E_UPSTREAM_EMPTY"
    elif damage == "missing":
        catalogue.unlink()
        expected = "E_BUNDLE_INDEX"
    else:
        outside = tmp_path / "outside.parquet"
        shutil.move(catalogue, outside)
        catalogue.symlink_to(outside)
        expected = "E_PATH_ESCAPE"
    code, out = _cli("run", "--root", str(tmp_path / "r"), "--upstream", str(bundle_copy), "--quiet")
    assert code == 2 and expected in out, out


def test_corrupt_records_of_the_run_root(root: Path) -> None:
    run_dir = next(p for p in (root / "runs").iterdir() if (p / "run.json").is_file())
    (run_dir / "run.json").write_text("{not json")
    code, out = _cli("score", run_dir.name, "--root", str(root))
    assert code == 2 and "E_CORRUPT_FILE" in out and "run.json" in out
    pin = RunRoot(root).pin(42, 300, read_flag(RunRoot(root).upstream(42)))
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text("[1, 2")
    code, out = _cli("run", "--root", str(root), "--quiet")
    assert code == 2 and "E_CORRUPT_FILE" in out and f"seed=42/grid=300/{pin.name}" in out


def test_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, out = _cli("run", "--root", str(tmp_path / "f"), "--quiet")
    assert code == 2 and "E_ROOT_UNWRITABLE" in out


@contextlib.contextmanager
def _mounted(target: Path, *options: str) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount here ({exc}); needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def test_read_only_root(tmp_path: Path) -> None:
    target = tmp_path / "ro"
    with _mounted(target, "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs"):
        code, out = _cli("run", "--root", str(target / "runs"), "--quiet")
    assert code == 2 and "E_ROOT_UNWRITABLE" in out


def test_disk_full_leaves_nothing_half_written(tmp_path: Path, bundle42: Path) -> None:
    target = tmp_path / "full"
    with _mounted(target, "-t", "tmpfs", "-o", "size=3m", "tmpfs"):
        code, out = _cli(
            "run", "--root", str(target), "--upstream", str(bundle42), "--policies", str(BASELINE_POLICIES), "--quiet"
        )
        leftovers = [p for p in target.rglob("*") if ".tmp-" in p.name]
    assert code == 2 and "E_DISK_FULL" in out, out
    assert not leftovers


def test_summary_notes_are_cut_at_a_whole_item() -> None:
    from seg1b_dask.cli.summaries import clip

    text = "plan_rows=21828, relocated_share=0.653486, countries_over_target=17, tiles_used=4215"
    cut = clip(text, 70)
    assert cut == "plan_rows=21828, relocated_share=0.653486, countries_over_target=17…" and len(cut) <= 70
    assert clip("short", 70) == "short"


def test_an_edit_elsewhere_reuses_every_state_but_the_sealing_one(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new package digest (an edit to, say, the CLI) is a new manifest_fingerprint: S1–S8
    are reused under it, S9 (whose sealed index carries the fingerprint) recomputes, and
    the run scores cleanly."""
    from seg1b_dask.chain import runner

    monkeypatch.setattr(runner, "code_digest", lambda: "0" * 64)
    result, scored = fast.fast_lane(root, 42, BASELINE_POLICIES, None, Execution())
    reused = {r.id for r in result.states if r.reused}
    assert reused == {f"S{i}" for i in range(1, 9)}
    assert scored.card["sealed"] and scored.grade.outcome == "RED"  # the baseline posture, scored, not refused
    for name in ("tile_grid", "tile_weights", "country_mass"):  # seed-free data carry their code's digest
        writer = registry.BY_ID[registry.WRITER[name]]
        assert f"code={registry.state_code_digest(writer.id)[:16]}" in str(result.outputs[name])
