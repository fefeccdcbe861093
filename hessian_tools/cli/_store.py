"""The report folder that ``hessian-tools analyze`` and ``demo`` write.

* ``PartStore``: every finished part of an analysis as ``parts/<part>.json``
  (its numbers, the problem's fingerprint, the settings it depends on) plus
  ``parts/<part>.npz`` (its arrays), written atomically as soon as the part
  is done. With ``resume=True`` a saved part is reused when its fingerprint
  and settings match, and refused (``StaleResultError``) when they do not:
  results of another problem or other settings are never mixed.
* ``write_json`` writes summary.json, ``save_figure`` a figure's PNG
  (the page itself: ``_html``).

Every file goes through ``atomic_write``: an interrupted run leaves the
previous version of a file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import platform
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np

from hessian_tools._checkpoint import atomic_write
from hessian_tools._problem import Problem
from hessian_tools.cli._part import PartResult

__all__ = [
    "PartStore",
    "ReportError",
    "StaleResultError",
    "open_shared",
    "problem_fingerprint",
    "save_figure",
    "versions",
    "write_json",
]

# 2: the slices scale each eigenvector to the random direction's loss rise
PART_FORMAT = "hessian_tools.analyze.part/3"


class ReportError(OSError):
    """The output folder cannot be written."""


class StaleResultError(ValueError):
    """A saved part was made for another problem or with other settings."""


# --------------------------------------------------------------------------
# Fingerprints


def _name(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_name(fn.func)})"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{getattr(fn, '__module__', None) or type(fn).__module__}.{qualname}"


def _hash_tree(h: Any, tree: Any) -> None:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(treedef)).encode())  # no addresses
    for leaf in leaves:
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            arr = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"|{arr.dtype}{arr.shape}|".encode())
            h.update(arr.tobytes())
        elif isinstance(leaf, (bool, int, float, complex, str, bytes, type(None))):
            h.update(f"|{leaf!r}|".encode())
        elif callable(leaf):
            h.update(f"|{_name(leaf)}|".encode())
        else:  # an opaque object: its type is all that is stable across runs
            h.update(f"|{type(leaf).__module__}.{type(leaf).__qualname__}|".encode())


def _program(problem: Problem) -> tuple[str, list]:
    """The loss's traced program and its constants: what a closure captures
    (its data, its activation, its body) shows up here and not in its name.
    One trace, no FLOPs."""
    from hessian_tools._params import Partition

    args = tuple(problem.args)
    if problem.batches:
        args = (*args, *problem.batches[0])
    partition = Partition.of(problem.params)  # non-array leaves held static
    variables, fixed = partition.split(problem.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        closed = jax.make_jaxpr(partition.wrap(problem.loss))(variables, fixed, *args)
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr))
    return text, list(closed.consts)


def problem_fingerprint(problem: Problem) -> str:
    """A hash of the problem: the loss's qualified name, its traced program
    and captured constants, and the bytes, dtypes and shapes of params, args
    and batches (copied to the host)."""
    h = hashlib.sha256(_name(problem.loss).encode())
    if isinstance(problem.loss, functools.partial):
        _hash_tree(h, (problem.loss.args, problem.loss.keywords))
    for part in (problem.params, problem.args, problem.batches):
        _hash_tree(h, part)
    try:
        text, consts = _program(problem)
    except Exception:  # not traceable as given: the checks before this say why
        text, consts = "untraceable", []
    h.update(text.encode())
    _hash_tree(h, consts)
    fa = problem.filter_axis
    h.update(f"|filter_axis={_name(fa) if callable(fa) else fa!r}".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def open_shared(path: Path, mode: str = "wb") -> Iterator[IO]:
    """``atomic_write``, readable by all (its temporary file is private,
    0600, but a report is for sharing)."""
    with atomic_write(path, mode) as fh:
        os.fchmod(fh.fileno(), 0o644)
        yield fh


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with every non-finite float as None: strict JSON (``NaN`` and
    ``Infinity`` are not JSON, and ``JSON.parse`` or ``jq`` reject them)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented strict JSON, written atomically (a non-finite
    number is written as null)."""
    text = json.dumps(_finite_or_null(_jsonable(obj)), indent=1, allow_nan=False)
    with open_shared(path, "w") as fh:
        fh.write(text + "\n")


def save_figure(fig: Any, path: Path, dpi: int = 110) -> bytes:
    """Write a matplotlib figure as PNG (atomically), close it, and return
    the PNG's bytes for embedding."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    with open_shared(path) as fh:
        fh.write(buf.getvalue())
    return buf.getvalue()


def versions() -> dict:
    """Versions of everything that shapes the numbers, and the device."""
    import jaxlib
    import matplotlib

    import hessian_tools

    return {
        "hessian_tools": hessian_tools.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": ", ".join(sorted({d.device_kind for d in jax.devices()})),
        "x64": bool(jax.config.x64_enabled),
    }


class PartStore:
    """Finished parts of one analysis under ``folder/parts``.

    Args:
        folder: the report folder (created if missing).
        problem: the problem analysed (fingerprinted once here).
        resume: reuse matching saved parts (``load``); otherwise ``load``
            returns None and every part is computed again.

    Raises:
        ReportError: the folder cannot be created or written.
    """

    def __init__(self, folder: Path, problem: Problem, resume: bool):
        self.folder, self.resume = Path(folder), resume
        self.parts = self.folder / "parts"
        self.check_writable(self.parts, self.folder)
        self.fingerprint = problem_fingerprint(problem)
        self.problem_name = problem.title

    @staticmethod
    def check_writable(folder: Path, shown: Path | None = None) -> None:
        """Create ``folder`` and write a file in it, or raise ``ReportError``
        (naming ``shown``, default ``folder``)."""
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(folder / ".write-test") as fh:
                fh.write(b"")
            os.remove(folder / ".write-test")
        except OSError as err:
            raise ReportError(
                f"cannot write to the output folder {shown or folder}: {err.strerror or err}"
            ) from err

    def checkpoint(self, part: str) -> Path:
        """A file for the finished rows of a part in progress (``slice_2d``)."""
        return self.parts / f"{part}.rows.npz"

    def load(self, part: str, settings: dict) -> PartResult | None:
        """The saved part if resuming and it exists; ``StaleResultError`` if
        it was made for another problem or with other settings."""
        path = self.parts / f"{part}.json"
        if not (self.resume and path.exists()):
            return None
        advice = "drop --resume to start afresh, or pass another --out"
        import hessian_tools

        try:
            record = json.loads(path.read_text())
            fingerprint, name = record["problem"]["fingerprint"], record["problem"]["name"]
            saved, version = record["settings"], record["version"]
            if record["format"] != PART_FORMAT:
                raise ValueError(f"format {record['format']!r}, not {PART_FORMAT!r}")
        except Exception as err:
            raise StaleResultError(f"{path} is not a saved part ({err!r}); {advice}.") from err
        if version != hessian_tools.__version__:
            raise StaleResultError(
                f"cannot resume: part {part} in {self.folder} was made by hessian_tools "
                f"{version}, this is {hessian_tools.__version__}; {advice}."
            )
        if fingerprint != self.fingerprint:
            raise StaleResultError(
                f"cannot resume: part {part} in {self.folder} was made for another problem "
                f"({name!r}: its loss, params, data or dtype differ); "
                f"{advice}."
            )
        now = _jsonable(settings)
        if saved != now:
            diff = ", ".join(
                f"{k} {saved.get(k)!r} -> {now.get(k)!r}"
                for k in sorted(set(saved) | set(now))
                if saved.get(k) != now.get(k)
            )
            raise StaleResultError(
                f"cannot resume: part {part} in {self.folder} was made with other settings "
                f"({diff}); {advice}."
            )
        arrays = {}
        if record["arrays"]:
            try:
                with np.load(self.parts / f"{part}.npz", allow_pickle=False) as data:
                    arrays = {k: data[k] for k in record["arrays"]}
            except (OSError, KeyError, ValueError):
                return None  # its arrays were lost: compute the part again
        return PartResult(
            part,
            record["results"],
            arrays,
            record["num_matvecs"],
            record["seconds"],
        )

    def save(self, result: PartResult, settings: dict) -> None:
        """Write the part: arrays first, then the record that marks it done."""
        import hessian_tools

        # an older record must not pair with the new arrays if we stop
        # between the two writes
        (self.parts / f"{result.part}.json").unlink(missing_ok=True)
        if result.arrays:
            with open_shared(self.parts / f"{result.part}.npz") as fh:
                np.savez(fh, **result.arrays)
        record = {
            "format": PART_FORMAT,
            "part": result.part,
            "problem": {"name": self.problem_name, "fingerprint": self.fingerprint},
            "settings": _jsonable(settings),
            "version": hessian_tools.__version__,
            "results": result.results,
            "arrays": sorted(result.arrays),
            "num_matvecs": result.num_matvecs,
            "seconds": result.seconds,
        }
        write_json(self.parts / f"{result.part}.json", record)
