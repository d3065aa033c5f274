"""Defaults more than one room needs (a leaf: imports nothing of the project)."""

# The seed when a diffusion config names none: the official code's.
DEFAULT_SEED = 3407
