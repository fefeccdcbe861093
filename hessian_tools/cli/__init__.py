"""The ``hessian-tools`` command-line application (``python -m hessian_tools``).

It only uses the library's public API; no core module imports it. Its
private modules:

* ``_main``: the command line (``analyze``, ``demo``), exit statuses, errors;
* ``_target``: loading ``module:factory`` or ``file.py:factory``;
* ``_part``: the ``Part`` record (one per analysis part), ``Settings``,
  ``PartResult``; ``_parts_spectrum``, ``_parts_landscape`` and
  ``_parts_blocks`` define the parts; ``_analysis``: their registry and the
  operator they share;
* ``_run``: the loop that computes, saves and reports every part;
* ``_store``: the saved parts (``--resume``) and the report's files;
  ``_html``: the self-contained page;
* ``_demo_toy``, ``_demo_digits``: ``hessian-tools demo``.
"""

from hessian_tools.cli._main import main

__all__ = ["main"]
