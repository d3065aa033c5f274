"""DDFM (Zhao et al., ICCV 2023): the EM rectifier (em.py) and its sampler loop (sampling.py)."""
