"""The per-layer part of the analysis (not run by default):
``block_spectra``, each layer's top eigenvalue and trace, as one ``Part``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from hessian_tools.blocks import block_spectra
from hessian_tools.cli._part import Computed, Part, PartResult, pm

__all__ = ["BLOCKS"]


def _blocks(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    p = an.problem
    blocks = block_spectra(
        p.loss,
        p.params,
        *p.args,
        batches=p.batches,
        key=key,
        trace_matvecs=an.settings.trace_matvecs,
    )
    rows = [
        {
            "name": b.name,
            "n": int(b.n),
            "top": float(np.asarray(b.values)[0]),
            "top_error_bound": float(np.asarray(b.error_bounds)[0]),
            "trace": float(b.trace.value),
            "trace_stderr": float(b.trace.stderr),
            "num_matvecs": int(b.num_matvecs),
        }
        for b in blocks
    ]
    return Computed({"blocks": rows}, {}, sum(r["num_matvecs"] for r in rows))


def _draw_blocks(result: PartResult) -> Any:
    import matplotlib.pyplot as plt

    from hessian_tools import plotting

    rows = result.results["blocks"]
    blocks = [
        SimpleNamespace(
            name=b["name"],
            values=[b["top"]],
            error_bounds=[b["top_error_bound"]],
            trace=SimpleNamespace(value=b["trace"], stderr=b["trace_stderr"]),
        )
        for b in rows
    ]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
    for ax, quantity in zip(axes, ("top", "trace"), strict=True):
        positive = all(b[quantity] > 0 for b in rows)
        plotting.plot_block_spectra(blocks, ax, quantity=quantity, log=positive)
    fig.tight_layout()
    return fig


def _blocks_section(s: dict) -> list:
    from hessian_tools.cli._html import Table

    rows = [
        (b["name"], b["n"], pm(b["top"], b["top_error_bound"]), pm(b["trace"], b["trace_stderr"]))
        for b in s["blocks"]
    ]
    return [
        "Diagonal blocks of the Hessian, one per layer (the other parameters held fixed).",
        Table(("block", "parameters", "top eigenvalue", "trace"), rows),
    ]


BLOCKS = Part(
    "blocks",
    "per-layer top eigenvalue and trace",
    _blocks,
    settings=("trace_matvecs", "seed"),
    default=False,
    figure="blocks.png",
    draw=_draw_blocks,
    summarize=lambda result: {"blocks": result.results["blocks"]},
    heading="Per-layer spectra",
    section=_blocks_section,
)
