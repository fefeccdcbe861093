"""The computations of the analysis parts (see ``hessian_tools.analysis``).

``Analysis(problem, settings)`` builds the Hessian operator once, which
checks that the loss is a real scalar and finite at params, and
``compute(part, done)`` runs one part through the library's public API,
returning a ``PartResult``.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from hessian_tools import landscape
from hessian_tools.analysis import PartResult, Problem, ProblemError, Settings, part_key
from hessian_tools.blocks import block_spectra
from hessian_tools.critical import classify, classify_cost
from hessian_tools.density import spectral_density
from hessian_tools.eigen import eigenpairs, lanczos_cost
from hessian_tools.estimators import trace
from hessian_tools.operators import HessianOperator

__all__ = ["Analysis"]


def _floats(x: Any) -> list:
    return [float(v) for v in np.ravel(np.asarray(x, dtype=np.float64))]


class Analysis:
    """The parts of one problem under one set of settings.

    Args:
        problem: a ``Problem``.
        settings: a ``Settings``.

    Raises:
        ProblemError: a loss that is not a real scalar, or not finite at
            params; params without floating-point arrays.
    """

    def __init__(self, problem: Problem, settings: Settings):
        self.problem, self.settings = problem, settings
        try:
            self.op = HessianOperator(
                problem.loss, problem.params, *problem.args, batches=problem.batches
            )
        except (ValueError, TypeError, FloatingPointError) as err:
            raise ProblemError(f"problem {problem.title!r}: {err}") from err
        self.n = self.op.n

    def compute(
        self,
        part: str,
        done: dict[str, PartResult],
        *,
        progress: bool = False,
        checkpoint: str | None = None,
    ) -> PartResult:
        """Compute one part; ``done`` holds the parts it needs.
        ``checkpoint``: a file for ``slice_2d``'s finished rows."""
        t0 = time.perf_counter()
        key = part_key(self.settings.seed, part)
        method = getattr(self, f"_{part}")
        kwargs = {"checkpoint": checkpoint} if part == "slice_2d" else {}
        results, arrays, spent, *estimated = method(key, done, progress, **kwargs)
        seconds = time.perf_counter() - t0
        return PartResult(part, results, arrays, int(spent), seconds, bool(estimated))

    # -- the parts --------------------------------------------------------
    def _point(self, key, done, progress):
        value, grad = self.op.value_and_grad()
        variables = self.op.ravel(self.op.variables)
        return (
            {
                "num_params": int(self.n),
                "loss": float(value),
                "grad_norm": float(np.linalg.norm(np.asarray(self.op.ravel(grad), np.float64))),
                "params_norm": float(np.linalg.norm(np.asarray(variables, np.float64))),
                "dtype": str(variables.dtype),
            },
            {},
            0,
        )

    def _classification(self, key, done, progress):
        p = self.problem
        cp = classify(p.loss, p.params, *p.args, batches=p.batches, key=key, progress=progress)
        results = {
            "kind": cp.kind,
            "index": int(cp.index),
            "index_stderr": float(cp.index_stderr),
            "exact": bool(cp.exact),
            "num_zero": int(cp.num_zero),
            "definiteness": cp.definiteness,
            "tol": float(cp.tol),
            "grad_tol": float(cp.grad_tol),
        }
        if cp.exact:  # the dense Hessian: n HVPs, and every eigenvalue
            return results, {"eigenvalues": np.asarray(cp.eigenvalues)}, self.n
        # classify does not report its count: its documented estimate, which
        # includes the spectral density that it runs only for an indefinite
        # Hessian (the index is then estimated from it)
        k = max(1, min(6, self.n // 2))  # classify's default k = 6 per end
        spent = (
            classify_cost(self.n, k)
            if cp.definiteness == "indefinite"
            else lanczos_cost(self.n, 2 * k, "both")
        )
        return results, {"eigenvalues": np.asarray(cp.eigenvalues)}, spent, True

    def _eigenvalues(self, key, done, progress):
        # One solve for both ends (which="both": one dense Hessian, or one
        # Krylov space), which with the default top_k = 6 is also the solver
        # that classify compiled for its k = 6 eigenpairs per end.
        if self.n == 1:
            ep = eigenpairs(self.op, 1, key=key, progress=progress)
            k, ends = 1, {"largest": [0], "smallest": [0]}
        else:
            k = max(1, min(self.settings.top_k, self.n // 2))
            ep = eigenpairs(self.op, 2 * k, which="both", key=key, progress=progress)
            # ascending: the k smallest first, the k largest last
            ends = {"largest": list(range(2 * k - 1, k - 1, -1)), "smallest": list(range(k))}
        values, bounds = np.asarray(ep.values), np.asarray(ep.error_bounds)
        vectors = np.asarray(ep.vectors)
        results = {"k": k, "num_matvecs": int(ep.num_matvecs)}
        arrays = {}
        for which, idx in ends.items():
            results[which] = {
                "values": _floats(values[idx]),
                "error_bounds": _floats(bounds[idx]),
                "converged": bool(ep.converged),
                "exact": bool(ep.exact),
            }
            arrays[f"{which}_vector"] = vectors[:, idx[0]]
        return results, arrays, ep.num_matvecs

    def _trace(self, key, done, progress):
        est = trace(self.op, key=key, num_matvecs=self.settings.trace_matvecs, progress=progress)
        results = {
            "value": float(est.value),
            "stderr": float(est.stderr),
            "method": est.method,
            "num_matvecs": int(est.num_matvecs),
        }
        return results, {}, est.num_matvecs

    def _density(self, key, done, progress):
        s = self.settings
        probes = s.num_probes
        budget = min(s.density_matvecs, probes * self.n)  # at most n steps per probe
        sd = spectral_density(
            self.op, key=key, num_matvecs=budget, num_probes=probes, progress=progress
        )
        frac, frac_err = sd.negative_fraction()
        results = {
            "negative_fraction": frac,
            "negative_fraction_stderr": frac_err,
            "index_estimate": frac * self.n,
            "lambda_min": sd.lambda_min,
            "lambda_max": sd.lambda_max,
            "num_probes": probes,
            "num_matvecs": int(sd.num_matvecs),
        }
        arrays = {
            "grid": np.asarray(sd.grid),
            "density": np.asarray(sd.density),
            "nodes": np.asarray(sd.nodes),
            "weights": np.asarray(sd.weights),
        }
        return results, arrays, sd.num_matvecs

    def random_direction(self) -> tuple[np.ndarray, str]:
        """The filter-normalised random direction of the slices, flat, and
        the normalisation used (no HVPs).

        Biases are zeroed (Li et al.'s default) unless every variable is a
        vector (a toy problem), which is then scaled as one filter; where
        params are zero, so that no scale can be taken, a unit direction.
        """
        p, s = self.problem, self.settings
        axis = s.filter_axis if s.filter_axis is not None else p.filter_axis
        key = part_key(s.seed, "random_direction")
        weights = any(np.ndim(leaf) >= 2 for leaf in jax.tree.leaves(self.op.variables))
        try:
            d = landscape.random_direction(
                key, p.params, filter_axis=axis, leaves_1d="zero" if weights else "keep"
            )
            label = "filter" if weights else "layer (every variable is a vector)"
        except ValueError as err:
            if "identically zero" not in str(err):
                raise ProblemError(
                    f"the random direction of the slices: {err} On the command line: "
                    "--filter-axis -1 or 0; in a factory: Problem(filter_axis=...)."
                ) from err
            flat = np.asarray(
                self.op.ravel(landscape.random_direction(key, p.params, None, leaves_1d="keep"))
            )
            return flat / np.linalg.norm(flat), "unit (params are zero)"
        return np.asarray(self.op.ravel(d)), label

    def _unit_eigenvector(self, done, which: str) -> np.ndarray:
        v = np.asarray(done["eigenvalues"].arrays[f"{which}_vector"])
        return v / np.linalg.norm(v)

    def _axis(self) -> np.ndarray:
        s = self.settings
        return np.linspace(-s.span, s.span, s.grid)

    def _slice_1d(self, key, done, progress):
        p = self.problem
        random, label = self.random_direction()
        scale = float(np.linalg.norm(random))
        directions = {
            "top_eigenvector": scale * self._unit_eigenvector(done, "largest"),
            "random": random,
        }
        alphas, arrays = self._axis(), {"alphas": self._axis()}
        for name, d in directions.items():
            sl = landscape.slice_1d(
                p.loss, p.params, d, alphas, *p.args, batches=p.batches, progress=progress
            )
            arrays[name] = np.asarray(sl.values)
        results = {
            "directions": list(directions),
            "direction_norm": scale,
            "normalization": label,
            "num_loss_evaluations": 2 * alphas.size,
        }
        return results, arrays, 0

    def _slice_2d(self, key, done, progress, checkpoint=None):
        p = self.problem
        scale = float(np.linalg.norm(self.random_direction()[0]))
        d1 = scale * self._unit_eigenvector(done, "largest")
        d2 = scale * self._unit_eigenvector(done, "smallest")
        xs = ys = self._axis()
        sl = landscape.slice_2d(
            p.loss,
            p.params,
            (d1, d2),
            xs,
            ys,
            *p.args,
            batches=p.batches,
            checkpoint=checkpoint,
            progress=progress,
        )
        results = {
            "directions": ["top_eigenvector", "bottom_eigenvector"],
            "direction_norm": scale,
            "overlap": float(abs(np.dot(d1, d2)) / scale**2),
            "num_loss_evaluations": int(xs.size * ys.size),
        }
        return results, {"xs": xs, "ys": ys, "values": np.asarray(sl.values)}, 0

    def _blocks(self, key, done, progress):
        p = self.problem
        blocks = block_spectra(
            p.loss,
            p.params,
            *p.args,
            batches=p.batches,
            key=key,
            trace_matvecs=self.settings.trace_matvecs,
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
        return {"blocks": rows}, {}, sum(r["num_matvecs"] for r in rows)
