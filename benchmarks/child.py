"""Fresh-process memory runs of hessian_tools (peak RSS of one job).

``python benchmarks/child.py top10 W-mid`` runs one default-settings top-10
``eigenpairs`` call and prints a JSON object with ``peak_rss_mb``
(VmHWM of this process); ``base`` only imports JAX, builds the
operator and does one HVP, the floor under that figure.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _rss import peak_rss_mb


def main(task: str, name: str) -> None:
    import jax
    import ours
    import workloads as wl

    w = wl.get_workload(name)
    out = {}
    try:
        if task == "top10":
            res = ours.iterative_eigenpairs()(ours.fresh_operator(w), 10, key=jax.random.PRNGKey(0))
            jax.block_until_ready(res)
            out["hvps"] = int(res.num_matvecs)
        else:
            op = ours.fresh_operator(w)
            jax.block_until_ready(op.matvec(jax.numpy.ones(op.n)))
    except ours.NotAvailable as exc:
        out["error"] = str(exc)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
