"""The prior-free Bayesian fusion (the BF release DDFM's likelihood step comes from)."""
