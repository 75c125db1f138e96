"""Training recipes: ``python -m ride_jax.main --config=configs/<name>.py[:args]``."""
