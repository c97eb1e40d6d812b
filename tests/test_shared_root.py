"""A run root shared by several hosts: temporary names never collide between hosts,
task outputs are written whole, a filesystem publishing cannot work on is refused, a
worker that does not see the root is named, and packs compare by their content."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seg1b_dask.cli import main
from seg1b_dask.errors import EnvironmentFault
from seg1b_dask.io import lineage
from seg1b_dask.io.datasets import _write_parquet
from seg1b_dask.io.packs import pack_content_sha256
from seg1b_dask.io.runroot import RunRoot, check_shared


def test_two_hosts_with_the_same_pid_stage_under_different_names(monkeypatch: pytest.MonkeyPatch) -> None:
    final = Path("/shared/data/site_locations/seed=42")
    monkeypatch.setattr(os, "getpid", lambda: 7)  # containers often run the job as pid 7 on every host
    names = set()
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(lineage, "HOST", host)
        names.add(lineage.stage_path(final))
    assert len(names) == 2 and all(".tmp-" in p.name and p.parent == final.parent for p in names)


def test_a_task_output_is_written_whole_by_concurrent_writers(tmp_path: Path) -> None:
    """A lost worker still finishing a task and its re-run elsewhere write one file: each
    replaces it whole, so a reader polling meanwhile only ever sees one complete copy, and
    no temporary is left."""
    table = pa.table({"site_id": pa.array(range(300_000), pa.int64())})
    folder = tmp_path / "site_locations"
    folder.mkdir()
    path = folder / "country=DE" / "part-00000.parquet"
    writing = threading.Event()
    seen: list[object] = []

    def writer() -> None:
        for _ in range(10):
            _write_parquet(table, folder, "country=DE/part-00000.parquet")

    def reader() -> None:
        while writing.is_set():
            try:
                seen.append(pq.read_table(path).num_rows)
            except FileNotFoundError:
                continue
            except Exception as exc:  # a torn file: what a non-atomic write shows
                seen.append(exc)

    writing.set()
    watcher = threading.Thread(target=reader)
    watcher.start()
    writers = [threading.Thread(target=writer) for _ in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    writing.clear()
    watcher.join()
    assert seen and set(seen) == {table.num_rows}, [s for s in seen if s != table.num_rows][:3]
    assert pq.read_table(path).equals(table)
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-00000.parquet"]


def test_a_late_write_into_a_sealed_dataset_fails(tmp_path: Path) -> None:
    """Once the staged folder is renamed away, a late task cannot recreate it."""
    table = pa.table({"site_id": pa.array([1, 2], pa.int64())})
    with pytest.raises(FileNotFoundError):
        _write_parquet(table, tmp_path / "gone", "country=DE/part-00000.parquet")
    assert not (tmp_path / "gone").exists()


def test_a_filesystem_without_hard_links_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(EnvironmentFault) as err:
        RunRoot.open(tmp_path / "root")
    assert err.value.code == "E_ROOT_UNSUPPORTED" and "POSIX" in err.value.message
    assert err.value.file == str((tmp_path / "root").resolve())
    assert not [p for p in (tmp_path / "root").iterdir()], "the probe leaves nothing behind"


class _Workers:
    """Stands for a distributed Client: ``run`` calls the function as each worker would,
    one of them on a host where the root is not mounted."""

    def run(self, fn, path: str) -> dict[str, object]:  # noqa: ANN001
        return {"tcp://10.0.0.2:40001": fn(path), "tcp://10.0.0.3:40001": fn("/not/mounted" + path)}


def test_a_worker_that_does_not_see_the_run_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFault) as err:
        check_shared(_Workers(), tmp_path)
    assert err.value.code == "E_ROOT_NOT_SHARED"
    assert err.value.key == "tcp://10.0.0.3:40001" and "1 of 2" in err.value.message
    assert not list(tmp_path.iterdir()), "the probe is removed"


def test_worker_command_refuses_a_missing_volume(tmp_path: Path) -> None:
    missing = tmp_path / "runs"
    result = CliRunner().invoke(main, ["worker", "--root", str(missing), "tcp://127.0.0.1:8786"])
    assert result.exit_code == 2
    assert result.output.startswith("error: E_ROOT_NOT_SHARED:") and str(missing) in result.output
    assert result.output.count("\n") == 1 and not missing.exists()


def test_pack_content_ignores_receipts_and_sees_content(tmp_path: Path) -> None:
    def pack(folder: Path, run_id: str, wall: float, share: str) -> Path:
        (folder / "seeds" / "seed=42").mkdir(parents=True)
        card = {"baseline": {"run_id": run_id, "seed": 42, "nn_ratio": 16.4}, "metrics": {"top1_share": 0.05}}
        (folder / "seeds" / "seed=42" / "scorecard.json").write_text(json.dumps(card))
        (folder / "seeds" / "seed=42" / "country_shares.csv").write_text(f"DE,{share}\n")
        (folder / "pack.json").write_text(json.dumps({"run_ids": [run_id], "wall_seconds": wall, "seeds": [42]}))
        (folder / "report.html").write_text(f"<p>{run_id}</p>")
        return folder

    a = pack(tmp_path / "a", "20260101T000000Z-s42-aaaa", 31.0, "0.05")
    b = pack(tmp_path / "b", "20261129T200000Z-s42-bbbb", 44.5, "0.05")
    c = pack(tmp_path / "c", "20261129T200000Z-s42-bbbb", 44.5, "0.06")
    assert pack_content_sha256(a) == pack_content_sha256(b) != pack_content_sha256(c)
