"""Built-in toy losses whose critical points are known.

Every loss takes its point first, ``f(x, *args)``, like any loss in
hessian_tools. The 2-D problems take a ``(2,)`` array; the N-D ones an
``(N,)`` array. Critical points below were located by Newton's method in
float64 to 1e-12 and are listed to 12 digits, with the Hessian's eigenvalues.
``TOY_2D`` collects the 2-D problems with a plotting box and their known
critical points inside it, for tests and the demo.

References: Himmelblau (1972), *Applied Nonlinear Programming*; Rosenbrock
(1960), *Comput. J.* 3(3); Dixon & Szegő (1978) for the camel functions;
Rastrigin (1974); Styblinski & Tang (1990), *Neural Networks* 3(4);
Baldi & Hornik (1989), *Neural Networks* 2(1), for the linear autoencoder.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import as_key

__all__ = [
    "TOY_2D",
    "ToyProblem",
    "himmelblau",
    "linear_autoencoder",
    "linear_autoencoder_critical_point",
    "monkey_saddle",
    "quadratic_form",
    "random_symmetric",
    "rastrigin",
    "rosenbrock",
    "saddle",
    "six_hump_camel",
    "styblinski_tang",
    "three_hump_camel",
]


def _check_dim(x: jax.Array, name: str, dim: int | None = 2) -> None:
    shape = jnp.shape(x)
    if len(shape) != 1 or (dim is not None and shape[0] != dim) or shape[0] < 1:
        want = f"({dim},)" if dim is not None else "(N,)"
        raise ValueError(f"{name} takes a point of shape {want}, got shape {shape}.")


def himmelblau(x: jax.Array) -> jax.Array:
    """Himmelblau's function ``(x^2 + y - 11)^2 + (x + y^2 - 7)^2``.

    Nine critical points (point: value; Hessian eigenvalues):

    * minima, value 0: (3, 2): 54 -/+ 20*sqrt(2) = 25.7157, 82.2843;
      (-2.805118086953, 3.131312518251): 64.8404, 80.5501;
      (-3.779310253378, -3.283185991286): 70.7144, 133.7856;
      (3.584428340330, -1.848126526964): 28.6907, 105.4189;
    * saddles: (3.385154183607, 0.073851879838): 13.3119; -14.1352, 97.5479;
      (0.086677504555, 2.884254701175): 67.7192; -31.7066, 75.5076;
      (-3.073025750764, -0.081353044288): 104.0152; -39.6515, 72.4352;
      (-0.127961346731, -1.953714980245): 178.3372; -50.6102, 20.2840;
    * maximum: (-0.270844590667, -0.923038556480): 181.6165; -45.6052, -16.0660.
    """
    _check_dim(x, "himmelblau")
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def rosenbrock(x: jax.Array, a: float = 1.0, b: float = 100.0) -> jax.Array:
    """Rosenbrock's function ``sum_i b (x_{i+1} - x_i^2)^2 + (a - x_i)^2``.

    For N = 2 the only critical point is the minimum (a, a^2), with Hessian
    [[802, -400], [-400, 200]] at (1, 1) for the default a = 1, b = 100. For
    4 <= N <= 7 there is also a local minimum (Kok & Sandrock 2009), e.g. at
    (-0.7757, 0.6131, 0.3820, 0.1459) for N = 4, moving towards
    (-1, 1, ..., 1) as N grows; the global minimum is at (1, ..., 1) with
    value 0.
    """
    if jnp.ndim(x) != 1 or jnp.shape(x)[0] < 2:
        raise ValueError(f"rosenbrock takes a point of shape (N,) with N >= 2, got {jnp.shape(x)}.")
    return jnp.sum(b * (x[1:] - x[:-1] ** 2) ** 2 + (a - x[:-1]) ** 2)


def six_hump_camel(x: jax.Array) -> jax.Array:
    """Six-hump camel ``(4 - 2.1x^2 + x^4/3)x^2 + xy + (-4 + 4y^2)y^2``.

    Fifteen critical points, symmetric under x -> -x:

    * global minima (+/-0.089842013100, -/+0.712656403021), value -1.031628453490;
    * minima (+/-1.703606714970, -/+0.796083568673), -0.215463824384;
    * minima (+/-1.607104752920, +/-0.568651454884), 2.104250310311;
    * saddle (0, 0), value 0, eigenvalues -/+8.062257748;
    * saddles (+/-1.109205336805, -/+0.768268092510), 0.543718600978;
      (+/-1.638067984190, +/-0.228674069044), 2.229357197531;
      (+/-1.296070267167, +/-0.605084388039), 2.229470818030;
    * maxima (+/-1.230229876517, +/-0.162334584459), 2.496295351024.
    """
    _check_dim(x, "six_hump_camel")
    a, b = x[0], x[1]
    return (4 - 2.1 * a**2 + a**4 / 3) * a**2 + a * b + (-4 + 4 * b**2) * b**2


def three_hump_camel(x: jax.Array) -> jax.Array:
    """Three-hump camel ``2x^2 - 1.05x^4 + x^6/6 + xy + y^2``.

    Five critical points: the global minimum (0, 0); minima
    (+/-1.747552345830, -/+0.873776172915), value 0.298638442237; saddles
    (+/-1.070542291824, -/+0.535271145912), value 0.877361557763.
    """
    _check_dim(x, "three_hump_camel")
    a, b = x[0], x[1]
    return 2 * a**2 - 1.05 * a**4 + a**6 / 6 + a * b + b**2


def rastrigin(x: jax.Array, amplitude: float = 10.0) -> jax.Array:
    """Rastrigin's function ``A N + sum_i (x_i^2 - A cos(2 pi x_i))``.

    Separable: each coordinate has critical points at the roots of
    ``x + pi A sin(2 pi x) = 0``, one near every integer (a minimum along
    that axis, x = 0 exactly) and one near every half-integer (a maximum
    along it), while |x| < pi A (about 31 for A = 10). A point is a minimum when all
    coordinates sit near integers, a maximum when all sit near
    half-integers, and otherwise a saddle whose index is the number of
    half-integer coordinates. Global minimum 0 at the origin.
    """
    _check_dim(x, "rastrigin", None)
    return amplitude * x.shape[0] + jnp.sum(x**2 - amplitude * jnp.cos(2 * jnp.pi * x))


def styblinski_tang(x: jax.Array) -> jax.Array:
    """Styblinski–Tang ``(1/2) sum_i (x_i^4 - 16 x_i^2 + 5 x_i)``.

    Each coordinate sits at a root of ``2x^3 - 16x + 2.5 = 0``: -2.903534027771
    or 2.746802770991 (minima along the axis) or 0.156731256780 (maximum along
    it). So 3^N critical points, with index = the number of coordinates at
    0.156731256780. Global minimum -39.166165703771 N at (-2.903534027771, ...).
    """
    _check_dim(x, "styblinski_tang", None)
    return 0.5 * jnp.sum(x**4 - 16 * x**2 + 5 * x)


def monkey_saddle(x: jax.Array) -> jax.Array:
    """Monkey saddle ``x^3 - 3 x y^2``: one critical point, (0, 0), where the
    Hessian vanishes (degenerate; it is in fact a saddle of order three)."""
    _check_dim(x, "monkey_saddle")
    return x[0] ** 3 - 3 * x[0] * x[1] ** 2


def saddle(x: jax.Array) -> jax.Array:
    """``x^2 - y^2``: one non-degenerate saddle at (0, 0), eigenvalues -2, 2."""
    _check_dim(x, "saddle")
    return x[0] ** 2 - x[1] ** 2


def quadratic_form(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """``x^T A x / 2``: the Hessian is A everywhere and x = 0 is critical.

    Pass A as an argument (see ``random_symmetric``) so it is not baked into
    compiled code.
    """
    return 0.5 * x @ (matrix @ x)


def random_symmetric(eigenvalues: Sequence[float] | jax.Array, key: jax.Array | None = None):
    """A symmetric matrix ``Q diag(eigenvalues) Q^T`` with Haar-random
    orthogonal Q (identity Q when ``key`` is None)."""
    lam = jnp.asarray(eigenvalues)
    if not jnp.issubdtype(lam.dtype, jnp.floating):
        lam = lam.astype(jnp.result_type(float))
    if lam.ndim != 1 or lam.size == 0:
        raise ValueError("eigenvalues must be a non-empty 1-D sequence.")
    if key is None:
        return jnp.diag(lam)
    g = jax.random.normal(as_key(key), (lam.size, lam.size), dtype=lam.dtype)
    q, r = jnp.linalg.qr(g)
    q = q * jnp.sign(jnp.diag(r))[None, :]  # Haar measure (Mezzadri 2007)
    return (q * lam[None, :]) @ q.T


def linear_autoencoder(params: dict, sigma_sqrt: jax.Array) -> jax.Array:
    """Linear autoencoder ``(1/2) ||(I - W2 W1) Sigma^{1/2}||_F^2``.

    ``params = {"W1": (p, d), "W2": (d, p)}``; ``sigma_sqrt`` is a symmetric
    square root of the data covariance Sigma (d, d). Baldi & Hornik (1989):
    with Sigma's eigenvalues l_1 > ... > l_d distinct and eigenvectors u_i,
    the critical points are W2 W1 = orthogonal projection onto span{u_i : i
    in I} for every index set I with |I| <= p (see
    ``linear_autoencoder_critical_point``), with loss (1/2) sum_{i not in
    I} l_i. The only minimum (up to the GL(p) symmetry W1 -> C W1,
    W2 -> W2 C^-1, which makes every critical point degenerate along p^2
    directions) is I = {1, ..., p}; every other is a saddle, and the loss
    and the number of negative eigenvalues rise together.
    """
    d = sigma_sqrt.shape[0]
    residual = (jnp.eye(d, dtype=sigma_sqrt.dtype) - params["W2"] @ params["W1"]) @ sigma_sqrt
    return 0.5 * jnp.sum(residual**2)


def linear_autoencoder_critical_point(
    eigenvalues: Sequence[float], subset: Sequence[int], p: int, dtype=None
) -> tuple[dict, jax.Array, float]:
    """A closed-form critical point of ``linear_autoencoder`` with diagonal
    covariance ``Sigma = diag(eigenvalues)``.

    Args:
        eigenvalues: the d eigenvalues of Sigma (positive, distinct).
        subset: the index set I (0-based), ``len(subset) <= p``.
        p: width of the code layer.
        dtype: dtype of the arrays (default: jax's default float).

    Returns:
        ``(params, sigma_sqrt, loss)``: W1 holds the unit vectors e_i
        (i in I) as rows and zeros below; W2 its transpose; the loss is
        ``(1/2) sum_{i not in I} eigenvalues[i]``.
    """
    lam = np.asarray(eigenvalues, dtype=float)
    subset = list(subset)
    d = lam.size
    if len(subset) > p or len(set(subset)) != len(subset) or not all(0 <= i < d for i in subset):
        raise ValueError(f"subset must hold at most p = {p} distinct indices in [0, {d}).")
    w1 = np.zeros((p, d))
    for row, i in enumerate(subset):
        w1[row, i] = 1.0
    dtype = dtype or jnp.result_type(float)
    params = {"W1": jnp.asarray(w1, dtype), "W2": jnp.asarray(w1.T, dtype)}
    loss = 0.5 * float(sum(lam[i] for i in range(d) if i not in subset))
    return params, jnp.asarray(np.diag(np.sqrt(lam)), dtype), loss


# --------------------------------------------------------------------------
# Registry of 2-D problems with their known critical points


@dataclasses.dataclass(frozen=True)
class ToyProblem:
    """A 2-D toy loss with its plotting box and known critical points.

    ``critical_points`` is a tuple of ``(point, kind)`` with ``point`` a
    (2,) float64 numpy array; it lists every critical point inside ``bounds``.
    """

    name: str
    f: Callable[[jax.Array], jax.Array]
    bounds: tuple[tuple[float, float], tuple[float, float]]
    critical_points: tuple[tuple[np.ndarray, str], ...]
    log_scale: bool = False


#: The old name of ``ToyProblem``, kept so existing code runs; ``hessian_tools.Problem``
#: is a different type, the input of ``hessian-tools analyze``.
Problem = ToyProblem


def _from_list(pts: Sequence[tuple[float, float, str]]) -> tuple:
    return tuple((np.array([x, y], dtype=float), kind) for x, y, kind in pts)


def _mirror(pts: Sequence[tuple[float, float, str]]) -> list:
    return [q for x, y, k in pts for q in ((x, y, k), (-x, -y, k))]


def _roots_1d(g: Callable, dg: Callable, starts: np.ndarray) -> np.ndarray:
    x = np.asarray(starts, float)
    for _ in range(60):
        x = x - g(x) / dg(x)
    return np.unique(np.round(x, 12))


def _rastrigin_points(lo: float, hi: float, amplitude: float = 10.0) -> tuple:
    g = lambda x: 2 * x + 2 * np.pi * amplitude * np.sin(2 * np.pi * x)
    dg = lambda x: 2 + 4 * np.pi**2 * amplitude * np.cos(2 * np.pi * x)
    roots = _roots_1d(g, dg, np.arange(np.ceil(2 * lo), np.floor(2 * hi) + 1) / 2)
    roots = roots[(roots >= lo) & (roots <= hi)]
    is_max = np.abs(roots - np.round(roots)) > 0.25  # near a half-integer
    pts = []
    for (x, mx), (y, my) in itertools.product(zip(roots, is_max, strict=True), repeat=2):
        kind = "maximum" if mx and my else "minimum" if not (mx or my) else "saddle"
        pts.append((x, y, kind))
    return _from_list(pts)


_ST = (-2.903534027771, 0.156731256780, 2.746802770991)

TOY_2D: dict[str, ToyProblem] = {
    "himmelblau": ToyProblem(
        "himmelblau",
        himmelblau,
        ((-5.0, 5.0), (-5.0, 5.0)),
        _from_list(
            [
                (3.0, 2.0, "minimum"),
                (-2.805118086953, 3.131312518251, "minimum"),
                (-3.779310253378, -3.283185991286, "minimum"),
                (3.584428340330, -1.848126526964, "minimum"),
                (3.385154183607, 0.073851879838, "saddle"),
                (0.086677504555, 2.884254701175, "saddle"),
                (-3.073025750764, -0.081353044288, "saddle"),
                (-0.127961346731, -1.953714980245, "saddle"),
                (-0.270844590667, -0.923038556480, "maximum"),
            ]
        ),
        log_scale=True,
    ),
    "rosenbrock": ToyProblem(
        "rosenbrock",
        rosenbrock,
        ((-2.0, 2.0), (-1.0, 3.0)),
        _from_list([(1.0, 1.0, "minimum")]),
        log_scale=True,
    ),
    "six_hump_camel": ToyProblem(
        "six_hump_camel",
        six_hump_camel,
        ((-2.0, 2.0), (-1.0, 1.0)),
        _from_list(
            [
                (0.0, 0.0, "saddle"),
                *_mirror(
                    [
                        (0.089842013100, -0.712656403021, "minimum"),
                        (1.703606714970, -0.796083568673, "minimum"),
                        (1.607104752920, 0.568651454884, "minimum"),
                        (1.109205336805, -0.768268092510, "saddle"),
                        (1.638067984190, 0.228674069044, "saddle"),
                        (1.296070267167, 0.605084388039, "saddle"),
                        (1.230229876517, 0.162334584459, "maximum"),
                    ]
                ),
            ]
        ),
    ),
    "three_hump_camel": ToyProblem(
        "three_hump_camel",
        three_hump_camel,
        ((-2.5, 2.5), (-2.0, 2.0)),
        _from_list(
            [
                (0.0, 0.0, "minimum"),
                *_mirror(
                    [
                        (1.747552345830, -0.873776172915, "minimum"),
                        (1.070542291824, -0.535271145912, "saddle"),
                    ]
                ),
            ]
        ),
    ),
    "styblinski_tang": ToyProblem(
        "styblinski_tang",
        styblinski_tang,
        ((-5.0, 5.0), (-5.0, 5.0)),
        _from_list(
            [
                (x, y, {0: "minimum", 1: "saddle", 2: "maximum"}[(x == _ST[1]) + (y == _ST[1])])
                for x in _ST
                for y in _ST
            ]
        ),
    ),
    "rastrigin": ToyProblem(
        "rastrigin", rastrigin, ((-1.2, 1.2), (-1.2, 1.2)), _rastrigin_points(-1.2, 1.2)
    ),
    "monkey_saddle": ToyProblem(
        "monkey_saddle",
        monkey_saddle,
        ((-1.0, 1.0), (-1.0, 1.0)),
        _from_list([(0, 0, "degenerate")]),
    ),
    "saddle": ToyProblem(
        "saddle", saddle, ((-1.0, 1.0), (-1.0, 1.0)), _from_list([(0, 0, "saddle")])
    ),
}
