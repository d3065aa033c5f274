"""A methods x datasets comparison in one command (`python compare.py`, `ddfm compare`).

    plan.py     --datasets and --methods specs -> source folders and (label, config overrides)
    scoring.py  the metrics of every save folder, in parallel processes, cached by content hashes
    outputs.py  the paper table, one figure per dataset and index.html linking every run report

Each cell (method x dataset) is an ordinary sample.py save folder, fused through ddfm.run.run:
the command line (ddfm/cli/compare.py) drives the cells and then these modules. What lives here
may import ddfm.common, ddfm.files, ddfm.datasets, ddfm.methods (names only), ddfm.metrics, ddfm.present and
ddfm.savefolder; never the driver (ddfm.run) or ddfm.cli.
"""
