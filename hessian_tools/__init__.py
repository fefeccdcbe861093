"""hessian_tools: second-order analysis of JAX loss functions."""

from hessian_tools.dense import hessian
from hessian_tools.eigen import Eigenpairs, eigenpairs
from hessian_tools.operators import CurvatureOperator, HessianOperator, hvp

__version__ = "0.1.0"
