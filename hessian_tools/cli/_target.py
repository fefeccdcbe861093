"""Loading ``hessian-tools analyze``'s TARGET: ``package.module:factory`` or
``path/to/file.py:factory``, a function of no arguments that returns a
``hessian_tools.Problem``. Every failure is a ``CommandError``: one line,
with the exit status (2 for a TARGET that names nothing usable, 1 for code
that raised)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "CommandError", "load_problem"]

EXIT_FAILED, EXIT_USAGE = 1, 2
TARGET_FORM = "package.module:factory or path/to/file.py:factory"
PROBLEM_FORM = "hessian_tools.Problem(loss, params, args=(), batches=None, name=None)"


class CommandError(Exception):
    """An error reported as one line, with the exit status to return."""

    def __init__(self, message: str, status: int = EXIT_FAILED):
        super().__init__(message)
        self.status = status


def _run_import(what: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as err:
        raise CommandError(f"importing {what} failed: {type(err).__name__}: {err}") from err


def _import_target(where: str) -> Any:
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise CommandError(f"no such file: {where}", EXIT_USAGE)
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
        name = f"_hessian_tools_target_{path.stem}_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickle look modules up by name
        sys.path.insert(0, str(path.resolve().parent))  # its sibling modules import
        _run_import(where, spec.loader.exec_module, module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` does, for the console script
    try:
        spec = importlib.util.find_spec(where)
    except ModuleNotFoundError as err:
        raise CommandError(f"no module named {where!r} ({err})", EXIT_USAGE) from err
    except Exception as err:  # a parent package that fails to import
        raise CommandError(f"importing {where} failed: {type(err).__name__}: {err}") from err
    if spec is None:
        raise CommandError(
            f"no module named {where!r} on the Python path (for a file, write "
            f"path/to/file.py:factory)",
            EXIT_USAGE,
        )
    return _run_import(where, importlib.import_module, where)


def load_problem(target: str) -> Any:
    """Import TARGET's module (or file), call its factory, check the result."""
    import hessian_tools as ht

    where, sep, attr = target.rpartition(":")
    if not (sep and where and attr.isidentifier()):
        raise CommandError(f"TARGET must be {TARGET_FORM}; got {target!r}.", EXIT_USAGE)
    module = _import_target(where)
    factory = vars(module).get(attr)
    if factory is None:
        names = sorted(
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", "") == module.__name__
        )
        hint = f" (its functions: {', '.join(names[:8])})" if names else ""
        raise CommandError(f"{where} has no factory {attr!r}{hint}.", EXIT_USAGE)
    if not callable(factory):
        raise CommandError(
            f"{target} is not a function that returns a Problem (it is of type "
            f"{type(factory).__name__}).",
            EXIT_USAGE,
        )
    try:
        problem = factory()
    except Exception as err:
        raise CommandError(f"the factory {target} raised {type(err).__name__}: {err}") from err
    if isinstance(problem, ht.problems.ToyProblem):
        raise CommandError(
            f"the factory {target} returned a 2-D toy problem (hessian_tools.problems."
            f"ToyProblem); wrap it: ht.Problem(toy.f, point).",
            EXIT_USAGE,
        )
    if not isinstance(problem, ht.Problem):
        raise CommandError(
            f"the factory {target} returned {type(problem).__name__}, not a {PROBLEM_FORM}.",
            EXIT_USAGE,
        )
    return problem
