"""Files written atomically, and the row checkpoints of ``slice_2d``.

``atomic_write`` writes to a temporary file in the target's folder, flushes
and fsyncs it, then renames it over the target, so a crash or Ctrl-C mid-write
leaves the previous file intact (never a truncated one).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

import numpy as np

__all__ = ["atomic_write", "load_slice_checkpoint", "save_slice_checkpoint"]

SLICE_FORMAT = "hessian_tools.slice_2d/1"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_slice_checkpoint(path: str, xs, ys, fingerprint: str, names: list[str]):
    """The finished rows saved at ``path``; ``ValueError`` for a file that is
    not such a checkpoint, or one made for another grid or problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = {k: data[k] for k in data.files}
    except Exception as err:  # a foreign or damaged file: never overwrite it silently
        raise ValueError(
            f"cannot read checkpoint {path!r} as a slice_2d checkpoint: {err}"
        ) from err
    if str(saved.get("format", "")) != SLICE_FORMAT:
        raise ValueError(f"{path!r} is not a slice_2d checkpoint (format {SLICE_FORMAT}).")
    if not (
        saved["xs"].shape == xs.shape
        and saved["ys"].shape == ys.shape
        and np.array_equal(saved["xs"], xs)
        and np.array_equal(saved["ys"], ys)
    ):
        raise ValueError(
            f"checkpoint {path!r} was written for a different grid (xs of length "
            f"{saved['xs'].size}, ys of length {saved['ys'].size}); refusing to mix grids. "
            "Delete it or pass another path."
        )
    if list(saved["metric_names"]) != names or str(saved["fingerprint"]) != fingerprint:
        raise ValueError(
            f"checkpoint {path!r} was written for a different problem (params, "
            "directions, data, loss or metrics differ); refusing to mix them. Delete it "
            "or pass another path."
        )
    return saved["rows"]


def save_slice_checkpoint(path: str, xs, ys, fingerprint: str, names: list[str], rows) -> None:
    """Write the finished rows atomically (a crash keeps the previous file)."""
    with atomic_write(path) as fh:
        np.savez(
            fh,
            format=np.str_(SLICE_FORMAT),
            xs=xs,
            ys=ys,
            fingerprint=np.str_(fingerprint),
            metric_names=np.array(names, dtype=str),
            rows=rows,
        )
