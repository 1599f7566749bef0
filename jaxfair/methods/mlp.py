"""Plain-function MLPs over parameter pytrees, and stacks of same-shaped MLPs evaluated with ``jax.vmap``.

A stack holds ``M`` networks of identical shape with a leading ``M`` axis on every leaf, so the M attribute
encoders (or classifiers) of a method run as one vectorised call instead of a Python loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfair.training import init

MLPParams = list[dict[str, jax.Array]]


def mlp_sizes(input_dim: int, hidden: int, output_dim: int, layers: int) -> tuple[int, ...]:
    """Layer widths of an MLP with ``layers`` linear layers: ``(input, hidden, ..., hidden, output)``."""
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    return (input_dim,) + (hidden,) * (layers - 1) + (output_dim,)


def mlp_init(key: jax.Array, sizes: tuple[int, ...]) -> MLPParams:
    """He-normal weights and zero biases for ``len(sizes) - 1`` linear layers."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": init.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros((n,))}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def mlp_apply(params: MLPParams, x: jax.Array) -> jax.Array:
    """ReLU between layers, linear output. ``x (..., sizes[0]) -> (..., sizes[-1])``."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def stack_init(key: jax.Array, count: int, sizes: tuple[int, ...]) -> MLPParams:
    """``count`` independently initialised MLPs stacked on a leading axis."""
    return jax.vmap(lambda k: mlp_init(k, sizes))(jax.random.split(key, count))


def stack_apply(params: MLPParams, x: jax.Array) -> jax.Array:
    """Every MLP of a stack on the same input: ``x (B, in) -> (M, B, out)``."""
    return jax.vmap(lambda p: mlp_apply(p, x))(params)


def stack_apply_each(params: MLPParams, xs: jax.Array) -> jax.Array:
    """MLP ``m`` of a stack on input ``xs[m]``: ``xs (M, B, in) -> (M, B, out)``."""
    return jax.vmap(mlp_apply)(params, xs)
