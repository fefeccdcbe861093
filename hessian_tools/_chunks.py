"""Chunks of a stack: the one place for the memory rule and the padding.

Many products at once (a block of HVPs, probes, grid points of a slice)
are applied in chunks: a vectorised product holds every vector of the chunk
and, under ``vmap``, the product's intermediates for each of them, so the
chunk's size bounds the memory. The last chunk is padded to the same size,
so that one compiled shape serves every chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["CHUNK_BYTES", "chunks", "fit"]

#: Bytes of vectors per chunk when the caller gives no size (64 MB).
CHUNK_BYTES = 64 << 20


def fit(item_bytes: int, *, cap: int = 256, budget: int = CHUNK_BYTES) -> int:
    """Items per chunk: as many as fit in ``budget`` bytes at
    ``item_bytes`` each, at least 1 and at most ``cap``."""
    return max(1, min(int(cap), int(budget) // max(1, int(item_bytes))))


def chunks(
    stack: Any, size: int, *, pad: str = "zeros", shorten: bool = True
) -> Iterator[tuple[int, int, Any]]:
    """Consecutive chunks of a stack, the last one padded.

    Args:
        stack: a pytree of arrays (NumPy or JAX) with a common leading axis.
        size: rows per chunk.
        shorten: use ``min(size, rows)``, so that a short stack is one chunk
            of its own length (no padding); False pads it to ``size`` rows
            (where the compiled shape depends on more than the stack).
        pad: what fills the last chunk: ``"zeros"``, or ``"repeat"`` (the
            stack's first rows, for callers that must not see a zero
            vector, such as Lanczos starts).

    Yields:
        ``(start, take, chunk)``: the chunk's first row, the number of real
        rows in it (the rest is padding, to be dropped from its results),
        and the chunk, ``size`` rows long (``min(size, rows)`` with
        ``shorten``).
    """
    total = jax.tree.leaves(stack)[0].shape[0]
    size = max(1, min(int(size), total) if shorten else int(size))
    for start in range(0, total, size):
        take = min(size, total - start)
        chunk = jax.tree.map(lambda x, s=start, t=take: x[s : s + t], stack)
        if take < size:
            missing = size - take
            fill = jax.tree.map(lambda x, p=missing: _repeat(x, p), stack)
            if pad == "zeros":
                fill = jax.tree.map(lambda x: _xp(x).zeros_like(x), fill)
            chunk = jax.tree.map(lambda a, b: _xp(a).concatenate([a, b]), chunk, fill)
        yield start, take, chunk


def _repeat(x: Any, rows: int) -> Any:
    """The first ``rows`` rows of ``x``, cycled when it has fewer."""
    return x[np.arange(rows) % x.shape[0]]


def _xp(x: Any) -> Any:
    """NumPy for NumPy arrays (host data stays on the host), else jax.numpy."""
    return np if isinstance(x, np.ndarray) else jnp
