"""Sphinx configuration for hessian_tools (built with ``sphinx-build -W``)."""

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # gallery_reset, gallery_order, api_reference
sys.path.insert(0, str(HERE.parent))  # the package, also without an install

os.environ.setdefault("MPLBACKEND", "Agg")

import hessian_tools  # noqa: E402

project = "hessian_tools"
author = "hessian_tools developers"
copyright = "2025, hessian_tools developers"
release = hessian_tools.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "api_reference",  # docs/api_reference.py: every public name documented
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
    "auto_examples/*.md5",
]

# -- autodoc / autosummary / napoleon ---------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Attributes as :ivar: fields, so dataclass fields are not documented twice.
napoleon_use_ivar = True
napoleon_custom_sections = ["Cost"]

# -- myst --------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- sphinx-gallery ----------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "gallery_order.GalleryOrder",  # the story, then A-Z
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "plot_gallery": "True",
    "reset_modules": ("matplotlib", "gallery_reset.reset_jax"),
    "matplotlib_animations": False,
    "min_reported_time": 1,
}

# -- plot directive (the getting-started snippet runs at every build) --------
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.figsize": (6.4, 3.6), "savefig.bbox": "tight"}  # no clipped labels
# the gallery runs in the same process; its last example may have left
# float64 on
plot_pre_code = "import gallery_reset\ngallery_reset.reset_jax(None, None)"

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"hessian_tools {release}"
html_theme_options = {
    "logo": {"text": f"hessian_tools {release}"},
    "navbar_align": "left",
    "header_links_before_dropdown": 7,  # one line at 1300 px; the rest under "More"
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "show_prev_next": True,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_static_path = []
# No empty "Section Navigation" column on pages without sub-pages.
html_sidebars = {
    page: []
    for page in (
        "index",
        "getting_started",
        "concepts",
        "guide",
        "recipes",
        "scaling",
        "benchmarks",
        "migrating",
    )
}


# -- docstrings ----------------------------------------------------------------
# The docstrings are written for help() as much as for Sphinx: ``|x|`` means an
# absolute value or a norm, but reStructuredText reads bare |x| as a
# substitution reference (an error under -W). Escape the bars outside inline
# literals, after napoleon has converted the Google sections.
_BARS = re.compile(r"(?<![\\|\w])\|(?=[^\s|`])([^|`\n]*?[^\s|\\])\|(?![\w|])")
_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")


def _escape_bars(line: str) -> str:
    stripped = line.strip()
    if stripped == "|" or stripped.startswith(("| ", "+-", "+=")):  # line blocks, grid tables
        return line
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):  # even parts are outside literals
        parts[i] = _BARS.sub(r"\\|\1\\|", parts[i])
    return "".join(parts)


def _escape_docstring(app, what, name, obj, options, lines):
    lines[:] = [_escape_bars(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _escape_docstring, priority=900)
