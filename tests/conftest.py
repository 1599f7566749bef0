import jax

jax.config.update("jax_disable_most_optimizations", True)
