"""Atomic writes (hessian_tools._checkpoint): a failure mid-write keeps the
previous file, and no temporary file is left behind."""

import os

import pytest

from hessian_tools._checkpoint import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write(path) as fh:
        fh.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_write(path) as fh:
        fh.write(b"half of the second")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"first"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    with atomic_write(path, "w") as fh:
        fh.write("text")
    assert path.read_text() == "text"
