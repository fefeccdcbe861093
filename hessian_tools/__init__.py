"""hessian_tools: second-order analysis of JAX loss functions.

Gradients and Hessian-vector products on pytrees, dense Hessians for small
problems, Lanczos eigenpairs at both ends of the spectrum, trace / diagonal /
spectral-density estimates, Gauss-Newton and Fisher operators, critical
points found and classified, loss-landscape slices, plots, and toy problems
whose critical points are known. ``Problem`` bundles a loss, its point and
its data for the ``hessian-tools analyze`` command.
"""

import importlib
from typing import Any

from hessian_tools import landscape, problems
from hessian_tools._params import ModelStateWarning
from hessian_tools._problem import Problem
from hessian_tools.blocks import BlockSpectrum, block_heterogeneity, block_spectra
from hessian_tools.critical import CriticalPoint, classify, find_critical_points
from hessian_tools.dense import hessian
from hessian_tools.density import SpectralDensity, spectral_density
from hessian_tools.distributed import shard_batches
from hessian_tools.eigen import Eigenpairs, eigenpairs
from hessian_tools.escape import EscapeDirection, escape_direction, saddle_free_newton_step
from hessian_tools.estimators import Estimate, diagonal, trace
from hessian_tools.ggn import EmpiricalFisherOperator, GGNOperator
from hessian_tools.lanczos import LanczosResult, lanczos
from hessian_tools.operators import CurvatureOperator, HessianOperator, MatvecOperator, hvp
from hessian_tools.preconditioned import PreconditionedOperator, adam_preconditioner
from hessian_tools.tracking import SpectrumRecord, track_spectrum

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``ht.plotting`` is imported on first use: matplotlib costs about a
    # second at import, and analysis code that draws nothing should not pay it
    if name == "plotting":
        return importlib.import_module("hessian_tools.plotting")
    raise AttributeError(f"module 'hessian_tools' has no attribute {name!r}")


__all__ = [
    "BlockSpectrum",
    "CriticalPoint",
    "CurvatureOperator",
    "Eigenpairs",
    "EmpiricalFisherOperator",
    "EscapeDirection",
    "Estimate",
    "GGNOperator",
    "HessianOperator",
    "LanczosResult",
    "MatvecOperator",
    "ModelStateWarning",
    "PreconditionedOperator",
    "Problem",
    "SpectralDensity",
    "SpectrumRecord",
    "adam_preconditioner",
    "block_heterogeneity",
    "block_spectra",
    "classify",
    "diagonal",
    "eigenpairs",
    "escape_direction",
    "find_critical_points",
    "hessian",
    "hvp",
    "lanczos",
    "landscape",
    "plotting",
    "problems",
    "saddle_free_newton_step",
    "shard_batches",
    "spectral_density",
    "trace",
    "track_spectrum",
]
