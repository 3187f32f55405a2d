"""Atomic writes, locks, orphans, tensor loading and number checks."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.errors import (
    BusyError,
    NonFiniteError,
    check_float,
    check_int,
    check_ints,
    check_memory,
)
from mmdisco.io import (
    DirectoryLock,
    atomic_path,
    load_tensors,
    remove_orphans,
    save_tensors_atomic,
    sha256_file,
    write_json_atomic,
)


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "trunc')
        raise KeyboardInterrupt
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left


def test_files_get_the_permissions_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        save_tensors_atomic(tmp_path / "w.safetensors", {"x": torch.arange(3.0)})
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert torch.equal(load_file(tmp_path / "w.safetensors")["x"], torch.arange(3.0))


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "b.bin"
    path.write_bytes(b"mmdisco" * 1000)
    assert sha256_file(path) == hashlib.sha256(b"mmdisco" * 1000).hexdigest()


def test_lock_is_exclusive_released_by_its_owner_and_stale_when_its_process_is_gone(tmp_path):
    first = DirectoryLock(tmp_path).acquire()
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(BusyError, match=rf"by process {os.getpid()} on "):
        DirectoryLock(tmp_path).acquire()
    other = DirectoryLock(tmp_path)
    other.release()  # never held: leaves the lock alone
    assert (tmp_path / ".lock").exists()
    first.release()
    assert not (tmp_path / ".lock").exists()
    # A dead process's lock, and an unreadable one, are stale.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    for content in (json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}), ""):
        (tmp_path / ".lock").write_text(content)
        with DirectoryLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / ".lock").exists()


def test_orphans_are_the_temporary_names_only(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "shard-00000.safetensors") as tmp:
        tmp.write_bytes(b"half")
        os.link(tmp, tmp.with_name(tmp.name + "-kept"))  # what a kill -9 would leave
        raise RuntimeError("killed")
    (tmp_path / ".tmp-step-00000004").mkdir()
    keep = [tmp_path / "shard-00001.safetensors", tmp_path / ".hidden", tmp_path / "x.tmp"]
    for path in keep:
        path.write_text("mine")
    removed = remove_orphans(tmp_path)
    assert len(removed) == 2 and all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in keep)


def test_load_tensors_names_the_file_and_the_problem(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors_atomic(path, {"x": torch.ones(3)})
    assert torch.equal(load_tensors(path, keys=["x"])[0]["x"], torch.ones(3))
    with pytest.raises(ValueError, match=r"w\.safetensors: has no tensor 'y' \(found \['x'\]\)"):
        load_tensors(path, keys=["y"])
    path.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match=r"w\.safetensors: not a readable safetensors file"):
        load_tensors(path)
    with pytest.raises(FileNotFoundError, match=r"none\.safetensors: no such file"):
        load_tensors(tmp_path / "none.safetensors")
    with pytest.raises(NonFiniteError, match=r"n\.safetensors: 'x' holds 1 NaN"):
        save_tensors_atomic(tmp_path / "n.safetensors", {"x": torch.tensor([0.0, float("nan")])})
    assert not (tmp_path / "n.safetensors").exists()


def test_number_checks_and_memory_estimates():
    assert check_int("n", 3, 1) == 3 and check_float("lr", 1, 0.0, open_min=True) == 1.0
    for bad, message in ((True, "must be an integer, got True"), ("3", "got '3'"), (0, ">= 1")):
        with pytest.raises(ValueError, match=f"n: .*{message}"):
            check_int("n", bad, 1)
    with pytest.raises(ValueError, match="lr: must be finite, got inf"):
        check_float("lr", float("inf"))
    with pytest.raises(ValueError, match=r"mult: must be a non-empty list of integers, got '12'"):
        check_ints("mult", "12")
    with pytest.raises(ValueError, match=r"fakes\.num_samples: needs an estimated 13 TB of memory"):
        check_memory(13e12, "fakes.num_samples", available=25 * 10**9)
    check_memory(1e9, "small", available=25 * 10**9)


def test_io_and_study_export_import_no_torch():
    """Atomic writes need no torch: `mmdisco study export` (stdlib only) writes through them."""
    script = (
        "import sys\n"
        "import mmdisco.io, mmdisco.study, mmdisco.cli.web\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmdisco.io import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plots" / "line.png", dpi=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["line.png"]  # no temporary left
    assert not plt.fignum_exists(fig.number)
