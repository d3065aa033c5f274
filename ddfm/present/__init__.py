"""Presenting results: comparison figures with zoom-ins, the HTML report, paper tables.

`figure` composes rows of sources and fused images (with `zoom`'s boxes and insets) and writes PNG
or PDF; `report` writes a self-contained HTML page (template in `templates/`); `table` builds and
ranks a paper table, `results` gathers its measured rows, `published` reads the cited numbers in
`data/published_results.yaml` and `formats` renders LaTeX, Markdown and CSV. This package may import
`ddfm.metrics`, `ddfm.files`, `ddfm.savefolder.layout` and NumPy/Pillow/PyYAML; matplotlib and Jinja2
are imported inside the functions that draw, so importing a module here stays light. Nothing in
the driver, the prior or the methods imports this package, except the post-run report.
"""
