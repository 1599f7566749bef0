"""Random initial values that are the same bits whether the initialiser runs op by op or inside ``jax.jit``.

The trainer jits a model's ``init`` (one program instead of one per array shape the initialiser builds). Inside one
program XLA fuses a normal draw with the scale that follows it and rounds the product differently in the last bit
(``jax.random.normal(k, s) * jnp.sqrt(2 / m)`` moves by 6e-8), and an adversarial run that starts one bit apart ends
elsewhere. :func:`normal` keeps the draw out of that fusion, so a jitted ``init`` gives exactly the eager values
(``tests/test_trainer.py``).
"""

from __future__ import annotations

import jax


def normal(key: jax.Array, shape, dtype=None) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, fenced by an optimization barrier when traced, so the arithmetic
    that follows (a scale) is not fused into the draw."""
    sample = jax.random.normal(key, shape) if dtype is None else jax.random.normal(key, shape, dtype)
    return jax.lax.optimization_barrier(sample) if isinstance(sample, jax.core.Tracer) else sample
