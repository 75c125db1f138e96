"""ride_jax: RIDE (Routing Diverse Distribution-Aware Experts) in JAX/Flax."""

__version__ = "0.1.0"
