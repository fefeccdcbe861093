"""Reset global JAX state between gallery examples.

sphinx-gallery runs every example in the same process; an example that turns
on ``jax_enable_x64`` must not change the dtype of the next one.
"""

import jax


def reset_jax(gallery_conf, fname, when=None):
    """Turn float64 off again (the JAX default)."""
    jax.config.update("jax_enable_x64", False)
