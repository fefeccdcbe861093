"""hessian_tools: second-order analysis of JAX loss functions.

Gradients and Hessian-vector products on pytrees, dense Hessians for small
problems, extreme eigenpairs, critical points found and classified, and toy
problems whose critical points are known.
"""

from hessian_tools import landscape, plotting, problems
from hessian_tools.critical import CriticalPoint, classify, find_critical_points
from hessian_tools.dense import hessian
from hessian_tools.eigen import Eigenpairs, eigenpairs
from hessian_tools.escape import EscapeDirection, escape_direction, saddle_free_newton_step
from hessian_tools.operators import CurvatureOperator, HessianOperator, hvp

__version__ = "0.1.0"

__all__ = [
    "CriticalPoint",
    "CurvatureOperator",
    "Eigenpairs",
    "EscapeDirection",
    "HessianOperator",
    "classify",
    "eigenpairs",
    "escape_direction",
    "find_critical_points",
    "hessian",
    "hvp",
    "landscape",
    "plotting",
    "problems",
    "saddle_free_newton_step",
]
