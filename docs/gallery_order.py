"""The order of the gallery: the story the examples tell, not the alphabet.

sphinx-gallery sorts the scripts of a gallery folder with a key; this one
puts the scripts named in ``ORDER`` first, in that sequence (a name not
there yet is skipped), and any other script after them, alphabetically.
"""

from __future__ import annotations

from pathlib import Path

ORDER = (
    "plot_critical_points.py",
    "plot_saddles_high_dim.py",
    "plot_escape_saddle.py",
    "plot_spectrum_digits.py",
    "plot_vanishing_gradients.py",
    "plot_batchnorm.py",
    "plot_reparameterisation_trick.py",
    "plot_landscape.py",
    "plot_edge_of_stability.py",
    "plot_adam_edge_of_stability.py",
    "plot_sharpness_penalty.py",
    "plot_sharpness_generalisation.py",
    "plot_low_rank_attention.py",
)


class GalleryOrder:
    """Sort key for ``within_subsection_order``: the position in ``ORDER``,
    then the file name (sphinx-gallery passes names or full paths)."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __repr__(self) -> str:  # a stable value for Sphinx's config cache
        return "GalleryOrder"

    def __call__(self, filename: str) -> tuple[int, str]:
        name = Path(filename).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)
