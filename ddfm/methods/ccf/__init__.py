"""CCF (Cao et al., NeurIPS 2024): condition bank, GradNorm + Adam guidance, its I/O and per-step record."""
