"""Long-tailed data: profiles, the official subset selection, shot groups."""

from ride_jax.data.long_tail import PROFILES, long_tail_counts, select_long_tail, shot_masks

__all__ = ["PROFILES", "long_tail_counts", "select_long_tail", "shot_masks"]
