"""Spreading a data set over devices, and over processes, for ``batches=``.

The loss over a data set too large for one device is a mean over shards.
``shard_batches`` puts the samples (axis 0 of every array) on the devices of
a mesh axis with ``jax.sharding``, so that every HVP, Lanczos step and slice
runs data-parallel: each device evaluates its samples and one all-reduce
of gradient-sized partial sums combines them. A sample count that does not
divide evenly keeps its remainder as a second, replicated batch; since
``batches=`` weights each batch by its size, the result is exactly the mean
over all N samples, ``(N_main / N) f(main) + (N_rest / N) f(rest)``.

Several hosts: start every process with ``jax.distributed.initialize`` and
pass each process's own samples with ``process_local=True``; the arrays are
then assembled with ``jax.make_array_from_process_local_data`` and never
gathered to one host. See the user guide's "Scaling out".
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["shard_batches"]


def shard_batches(
    *arrays: Any, mesh: Any = None, axis: str = "data", process_local: bool = False
) -> list[tuple]:
    """The arrays' samples spread over a mesh axis, as ``batches=``.

    Args:
        *arrays: arrays with the samples along axis 0 (the same count each),
            e.g. ``x, y``.
        mesh: a ``jax.sharding.Mesh`` with an axis named ``axis`` (default:
            all devices on one axis of type Auto, which needs no mesh
            context; on a mesh with Explicit axes, call the library inside
            ``with jax.set_mesh(mesh):``).
        axis: the mesh axis the samples are spread over.
        process_local: the arrays are this process's own samples (in a
            multi-process program); every process must pass the same count,
            a multiple of its local devices on the axis.

    Returns:
        A list of argument tuples for ``batches=``: one whose arrays are
        sharded ``P(axis)``, and, when the count does not divide evenly,
        one with the remaining samples, replicated.

    Raises:
        ValueError: no arrays, arrays that disagree on the sample count, a
            mesh without ``axis``, or process-local counts that cannot be
            spread evenly.

    Example:
        >>> op = ht.HessianOperator(loss, params, batches=ht.shard_batches(x, y))
    """
    if not arrays:
        raise ValueError("shard_batches needs at least one array; got none.")
    counts = {int(np.shape(a)[0]) for a in arrays}
    if len(counts) != 1:
        raise ValueError(
            f"the arrays must agree on the sample count (axis 0); got {sorted(counts)}."
        )
    count = counts.pop()
    if mesh is None:
        mesh = jax.make_mesh((jax.device_count(),), (axis,), axis_types=(AxisType.Auto,))
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {axis!r}; it has {mesh.axis_names}.")
    size = mesh.shape[axis]
    sharded = NamedSharding(mesh, P(axis))
    if process_local:
        local = mesh.local_mesh.shape[axis]  # this process's devices along the axis
        if count % local:
            raise ValueError(
                f"process_local=True needs a sample count divisible by this process's "
                f"{local} devices on axis {axis!r}; got {count}. Give every process the "
                "same, divisible number of samples (drop or pad the rest yourself)."
            )
        return [tuple(jax.make_array_from_process_local_data(sharded, a) for a in arrays)]
    main = count - count % size
    if main == 0:
        raise ValueError(
            f"{count} samples cannot be spread over {size} devices; give at least {size}."
        )
    batches = [tuple(jax.device_put(a[:main], sharded) for a in arrays)]
    if main < count:
        replicated = NamedSharding(mesh, P())
        batches.append(tuple(jax.device_put(a[main:], replicated) for a in arrays))
    return batches
