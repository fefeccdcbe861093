"""``python -m hessian_tools``: the ``hessian-tools`` command (``hessian_tools.cli``)."""

from hessian_tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
