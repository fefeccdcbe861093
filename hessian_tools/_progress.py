"""Progress bars, also for work inside compiled loops.

A thin wrapper around ``tqdm``, off by default. Python loops call
``bar.update(n)``. Compiled loops cannot hold a Python object, so a bar is
registered under an integer *token*; the loop body passes the token (a
traced int) and the count to ``advance``, which ``jax.debug.callback``
runs on the host. The callback function is one module-level object, so
solvers compiled with progress on are reused across calls.

Example:
    >>> with progress_bar(total=100, desc="trace", enabled=False) as bar:
    ...     for _ in range(10):
    ...         bar.update(10)  # ten HVPs done
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np

__all__ = ["NoProgress", "advance", "progress_bar"]

_BARS: dict[int, Any] = {}
_TOKENS = itertools.count(1)


class NoProgress:
    """A do-nothing stand-in with the part of tqdm's interface we use."""

    n = 0
    token = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Bar:
    """A tqdm bar that can be advanced from compiled code by its token."""

    def __init__(self, bar: Any):
        self._bar = bar
        self.token = next(_TOKENS)
        _BARS[self.token] = bar

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def close(self) -> None:
        _BARS.pop(self.token, None)
        self._bar.close()

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _host_advance(token: Any, n: Any) -> None:
    tokens, counts = np.ravel(np.asarray(token)), np.ravel(np.asarray(n))
    for t, c in zip(np.broadcast_to(tokens, counts.shape), counts, strict=True):
        bar = _BARS.get(int(t))
        if bar is not None and int(c):
            bar.update(int(c))


def advance(token: Any, n: Any) -> None:
    """Advance the bar registered under ``token`` by ``n``, from inside jit
    (a host callback; nothing when ``token`` is 0, a disabled bar)."""
    jax.debug.callback(_host_advance, token, n)


def progress_bar(
    total: int | None, desc: str = "", enabled: bool = False, *, unit: str = "HVP"
) -> Any:
    """A progress bar counting HVPs (or other units) with rate and ETA.

    Args:
        total: expected number of units (e.g. the HVP budget); None if unknown.
        desc: label shown before the bar.
        enabled: show the bar; when False (the default) a ``NoProgress`` is
            returned, so callers need no branching and pay nothing.
        unit: what one count is ("HVP" by default).

    Returns:
        A bar with ``update(n)``, ``set_postfix(...)``, ``close()``, use as a
        context manager, and a ``token`` for ``advance`` (0 when disabled:
        compiled code then emits no callbacks).
    """
    if not enabled:
        return NoProgress()
    from tqdm.auto import tqdm

    return _Bar(tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False))
