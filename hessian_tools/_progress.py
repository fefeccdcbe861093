"""Progress bars for work that loops in Python (batches, restarts, probe chunks).

A thin wrapper around ``tqdm``, off by default. It only ever runs in Python
between jitted calls: never call it from inside a jitted function (it would
run once, at trace time, and count nothing).

Example:
    >>> with progress_bar(total=100, desc="trace", enabled=False) as bar:
    ...     for _ in range(10):
    ...         bar.update(10)  # ten HVPs done
"""

from __future__ import annotations

from typing import Any

__all__ = ["NoProgress", "progress_bar"]


class NoProgress:
    """A do-nothing stand-in with the part of tqdm's interface we use."""

    n = 0

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
        A ``tqdm`` bar or a ``NoProgress``. Both support ``update(n)``,
        ``set_postfix(...)``, ``close()`` and use as a context manager.
        Call ``update`` from Python only, after a jitted step returns.
    """
    if not enabled:
        return NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
