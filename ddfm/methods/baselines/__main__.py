"""python -m ddfm.methods.baselines: write the mean and max baselines of two source folders."""
from ddfm.methods.baselines.pixels import main

main()
