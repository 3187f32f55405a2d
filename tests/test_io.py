"""Atomic writes: all or nothing, no stray temporary files, ordinary permissions."""

import os

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.io import atomic_path, save_tensors_atomic, sha256_file, write_json_atomic


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
