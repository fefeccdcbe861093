"""Sphinx extension: keep the API reference complete and its links working.

* Every public name must be documented: the names in ``__all__`` of
  ``hessian_tools`` and of the modules it exports (``landscape``,
  ``plotting``, ``problems``). A name that no page of ``docs/api/`` lists is
  a warning, so ``sphinx-build -W`` fails until it is added to a group
  there.
* A name is documented once, under the name users import
  (``hessian_tools.eigenpairs``), but docstrings and type hints refer to it
  where it is defined (``hessian_tools.eigen.Eigenpairs``); such references
  are resolved to the documented name.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

from sphinx.util import logging

logger = logging.getLogger(__name__)

API_DIR = Path(__file__).resolve().parent / "api"
PACKAGE = "hessian_tools"

_CURRENT = re.compile(r"^\.\. (?:current)?module:: (\S+)")
# auto* directives, and py:data for a constant whose docstring is its type's
_AUTO = re.compile(r"^\.\. (?:auto(?:function|class|data|exception)|py:data):: (\S+)")
_DOCUMENTED: dict[int, str] = {}  # id(object) -> the name it is documented under


def documented_names(api_dir: Path = API_DIR) -> list[str]:
    """Full names listed on the API pages: ``autosummary`` entries and
    ``auto*`` directives, read with the ``currentmodule`` in force (an
    ``auto*`` name that starts with the package's is already full)."""
    names = []
    for path in sorted(api_dir.glob("*.rst")):
        module, in_table = PACKAGE, False
        for line in path.read_text().splitlines():
            if m := _CURRENT.match(line):
                module, in_table = m.group(1), False
            elif m := _AUTO.match(line):
                name = m.group(1)  # a full name, or one relative to the module
                names.append(name if name.startswith(PACKAGE + ".") else f"{module}.{name}")
                in_table = False
            elif line.startswith(".. autosummary::"):
                in_table = True
            elif in_table and line.strip() and not line.startswith(" "):
                in_table = False
            elif in_table and line.strip() and not line.strip().startswith(":"):
                names.append(f"{module}.{line.strip().lstrip('~')}")
    return names


def resolve(name: str) -> Any:
    """The object a dotted name refers to (attribute access first, so that
    ``hessian_tools.lanczos`` is the function that shadows its module)."""
    parts = name.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def public_names() -> dict[str, Any]:
    """``module.name -> object`` for the names in the package's ``__all__``
    and in ``__all__`` of the modules it exports (``ht.landscape``, ...):
    everything a user reaches from ``import hessian_tools as ht``."""
    package = importlib.import_module(PACKAGE)
    out = {}
    for name in package.__all__:
        obj = getattr(package, name)
        if not inspect.ismodule(obj):
            out[f"{PACKAGE}.{name}"] = obj
            continue
        for sub in obj.__all__:
            out[f"{obj.__name__}.{sub}"] = getattr(obj, sub)
    return out


def _check_complete(app) -> None:
    """Warn about every public name that no API page lists."""
    _DOCUMENTED.clear()
    for name in documented_names():
        try:
            _DOCUMENTED[id(resolve(name))] = name
        except (ImportError, AttributeError):
            logger.warning(f"API reference lists {name}, which does not exist")
    missing = [n for n, obj in public_names().items() if id(obj) not in _DOCUMENTED]
    for name in missing:
        logger.warning(
            f"public name {name} is not in the API reference: add it to a group in docs/api/"
        )


def _resolve_reexport(app, env, node, contnode):
    """A reference to where an object is defined, resolved to its entry."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith(PACKAGE + "."):
        return None
    try:
        obj = resolve(target)
    except (ImportError, AttributeError):
        return None
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return None
    documented = _DOCUMENTED.get(id(obj))
    if documented is None or documented == target:
        return None
    return env.get_domain("py").resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], documented, node, contnode
    )


def _drop_object_base(app, name, obj, options, bases):
    bases[:] = [b for b in bases if b is not object]


def setup(app):
    app.connect("builder-inited", _check_complete)
    app.connect("missing-reference", _resolve_reexport)
    app.connect("autodoc-process-bases", _drop_object_base)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
