"""Comparison figures: rows = pairs, columns = IR | VIS | method 1 ... N, with zoom-ins.

Panels are composed in numpy at source resolution (ddfm.present.zoom: outlines and nearest-neighbour
insets), then matplotlib places them on a pixel grid of its own and writes PNG or vector PDF (the
panels are embedded unresampled in the PDF). Images are shown in colour as stored; metrics are
elsewhere. Panels smaller than their sources (the official /32 crop) are drawn top-left in a cell
of the source size, as evaluate.py aligns them, and a note says so.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ddfm.files import write_atomic
from ddfm.metrics.evaluation import EvaluationError, list_images, read_pixels
from ddfm.metrics.images import luma_from_rgb8
from ddfm.present import zoom

# Figure widths in inches: one column / a full page of a two-column paper (IEEE/CVF).
WIDTHS = {"column": 3.5, "page": 7.16}
TITLE_PT = 7
MISSING_GREY = 235


class FigureError(ValueError):
    """Bad input for a figure (a missing stem or file, a box outside an image): one line."""


@dataclass
class Row:
    """One pair: panel titles, RGB panels (None = missing) and the source shape."""
    stem: str
    titles: list
    images: list
    shape: tuple
    notes: list = field(default_factory=list)


def read_rgb(path):
    """An image file -> (H, W, 3) uint8 for display (grey repeated on the three channels)."""
    try:
        data = read_pixels(path)  # evaluate.py's read: the same pixels and the same one-line error
    except EvaluationError as err:
        raise FigureError(str(err)) from None
    return np.repeat(data[..., None], 3, axis=2) if data.ndim == 2 else data


def _listing(folder, what):
    try:
        return list_images(folder)
    except EvaluationError as err:
        raise FigureError(f"{what}: {err}") from None


def load_rows(a_dir, b_dir, fused_dirs, stems, source_names=("IR", "VIS"), allow_missing=False):
    """Read every panel of every stem -> [Row]. A stem missing from a source is an error; one
    missing from a method is an error unless allow_missing (the panel is then None)."""
    sources = [_listing(a_dir, source_names[0]), _listing(b_dir, source_names[1])]
    methods = {name: _listing(folder, f"method '{name}'") for name, folder in fused_dirs.items()}
    rows = []
    for stem in stems:
        for name, files, folder in zip(source_names, sources, (a_dir, b_dir)):
            if stem not in files:
                raise FigureError(f"stem '{stem}' not found in {folder} ({name})")
        images = [read_rgb(files[stem]) for files in sources]
        if images[0].shape != images[1].shape:
            raise FigureError(f"size mismatch in pair '{stem}': {images[0].shape[1]}x{images[0].shape[0]}"
                              f" vs {images[1].shape[1]}x{images[1].shape[0]}")
        row = Row(stem, list(source_names) + list(methods), images, images[0].shape[:2])
        for name, files in methods.items():
            if stem not in files:
                if not allow_missing:
                    raise FigureError(f"method '{name}': stem '{stem}' missing in {fused_dirs[name]}"
                                      f" (--allow-missing shows an empty panel)")
                row.images.append(None)
                continue
            image = read_rgb(files[stem])
            if image.shape[0] > row.shape[0] or image.shape[1] > row.shape[1]:
                raise FigureError(f"{files[stem]}: {image.shape[1]}x{image.shape[0]} is larger than "
                                  f"its sources ({row.shape[1]}x{row.shape[0]})")
            if image.shape[:2] != row.shape:
                row.notes.append(f"{name} '{stem}' {image.shape[1]}x{image.shape[0]}")
            row.images.append(image)
        rows.append(row)
    return rows


def align_top_left(image, shape, fill=zoom.BACKGROUND):
    """Place an image at the top-left of a canvas of `shape` (H, W); the rest is `fill`."""
    canvas = np.full((shape[0], shape[1], 3), fill, dtype=np.uint8)
    canvas[:image.shape[0], :image.shape[1]] = image
    return canvas


def row_boxes(row, zooms, auto_size=None):
    """The boxes of one row: fixed boxes are checked against the sources; 'auto' entries become
    the windows where the fused panels (all panels with one method) disagree most."""
    if len(zooms) > zoom.MAX_BOXES:
        raise FigureError(f"pair '{row.stem}': {len(zooms)} zoom boxes; at most {zoom.MAX_BOXES}")
    fixed = [b for b in zooms if b != "auto"]
    for box in fixed:
        zoom.check_box(box, row.shape, f"pair '{row.stem}'")
    wanted = len(zooms) - len(fixed)
    if not wanted:
        return fixed
    present = [img for img in row.images[2:] if img is not None]
    panels = present if len(present) >= 2 else [img for img in row.images if img is not None]
    lumas = [luma_from_rgb8(img) for img in panels]
    size = auto_size or zoom.default_auto_size(row.shape)
    if size[0] > row.shape[1] or size[1] > row.shape[0]:
        raise FigureError(f"auto zoom window {size[0]}x{size[1]} is larger than pair '{row.stem}'")
    return fixed + zoom.auto_boxes(lumas, size, wanted)


def compose_row(row, boxes, placement="auto", factor=None, thickness=None):
    """Every panel of a row at the source size, boxes outlined and insets pasted; a missing
    panel stays None. Returns the list of (H', W', 3) arrays."""
    factors = [factor] * len(boxes) if factor else None
    panels = []
    for image in row.images:
        if image is None:
            panels.append(None)
            continue
        canvas = align_top_left(image, row.shape)
        try:
            panels.append(zoom.compose_panel(canvas, boxes, placement, factors, thickness)[0])
        except zoom.ZoomError as err:
            raise FigureError(f"pair '{row.stem}': {err}") from None
    return panels


@dataclass
class Layout:
    """The composed panels on their grid (already transposed if asked) with the titles; sizes
    are in layout pixels (source pixels)."""
    grid: list  # grid[r][c] = panel array
    missing: set  # (r, c) of the panels shown as "missing"
    col_titles: list
    row_titles: list
    gap: int

    def sizes(self):
        heights = [max(p.shape[0] for p in row) for row in self.grid]
        widths = [max(row[c].shape[1] for row in self.grid) for c in range(len(self.grid[0]))]
        return heights, widths


def build_layout(rows, panels, transpose=False):
    """Grid of composed panels with titles (pairs as rows, or as columns when transposed); a
    missing panel (None) becomes a grey one of its row's size."""
    grid = [[p if p is not None else np.full_like(row_panels[0], MISSING_GREY) for p in row_panels]
            for row_panels in panels]
    missing = {(r, c) for r, row_panels in enumerate(panels) for c, p in enumerate(row_panels) if p is None}
    col_titles, row_titles = list(rows[0].titles), [row.stem for row in rows]
    if transpose:
        grid = [list(col) for col in zip(*grid)]
        missing = {(c, r) for r, c in missing}
        col_titles, row_titles = row_titles, col_titles
    gap = max(2, max(max(r.shape) for r in rows) // 64)
    return Layout(grid, missing, col_titles, row_titles, gap)


def _band_px(points, dpi, scale, lines=1.0):
    """Layout pixels that `lines` lines of `points`-sized text need at the output scale."""
    return int(math.ceil(points / 72.0 * dpi * 1.5 * lines / scale))


def _label_band(labels, dpi, scale, gap):
    """Width of the row-label band: 0.75 em per character (DejaVu's digits are 0.64 em wide, so
    0.6 em clipped a two-digit stem at the figure's edge), plus a gap."""
    return _band_px(TITLE_PT * 0.5 * max(len(t) for t in labels), dpi, scale) + gap


def fit_scale(widths, gap, labels, dpi, width_in):
    """Output pixels per source pixel so that labels + panels fill `width_in` at `dpi`."""
    raw_w = sum(widths) + gap * (len(widths) - 1)
    scale = width_in * dpi / raw_w
    for _ in range(4):  # the label band shrinks as the scale grows: a few fixed-point steps
        scale = width_in * dpi / (raw_w + _label_band(labels, dpi, scale, gap))
    return scale


def _save(fig, handle, suffix, dpi):
    """PDF through matplotlib (vector text, unresampled panels); PNG as opaque RGB (a third
    smaller than matplotlib's RGBA), pixel for pixel what the Agg canvas drew."""
    if suffix == ".pdf":
        fig.savefig(handle, format="pdf", dpi=dpi)
        return
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    Image.fromarray(rgb).save(handle, format="PNG", optimize=True, dpi=(dpi, dpi))


@dataclass
class Rendered:
    """What render drew: the figure size and each panel's (top, left, height, width), in pixels."""
    size: tuple
    cells: dict


def render(layout, out, dpi=300, scale=1.0, note=""):
    """Draw the layout with matplotlib into `out` (.png or .pdf) atomically; panels are shown
    with nearest-neighbour sampling at scale >= 1 (exact at 1) and antialiased when shrunk."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    heights, widths = layout.sizes()
    title = _band_px(TITLE_PT, dpi, scale)
    label = _label_band(layout.row_titles, dpi, scale, layout.gap)
    note_h = _band_px(TITLE_PT * 0.9, dpi, scale, lines=1.3) if note else 0
    total_w = label + sum(widths) + layout.gap * (len(widths) - 1)
    total_h = title + sum(heights) + layout.gap * (len(heights) - 1) + note_h
    fig_w, fig_h = round(total_w * scale), round(total_h * scale)
    fig = plt.figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    try:
        cells = _draw(fig, layout, (label, title), (total_w, total_h),
                      "nearest" if scale >= 1 else "antialiased")
        for c, text in enumerate(layout.col_titles):
            x = label + sum(widths[:c]) + layout.gap * c + widths[c] / 2
            fig.text(x / total_w, 1 - title * 0.45 / total_h, text, ha="center", va="center",
                     fontsize=TITLE_PT)
        for r, text in enumerate(layout.row_titles):
            y = title + sum(heights[:r]) + layout.gap * r + heights[r] / 2
            fig.text((label - layout.gap) / total_w, 1 - y / total_h, text, ha="right",
                     va="center", fontsize=TITLE_PT)
        if note:
            fig.text(label / total_w, note_h * 0.5 / total_h, note, ha="left", va="center",
                     fontsize=TITLE_PT * 0.9, color="0.3")
        write_atomic(out, lambda handle: _save(fig, handle, Path(out).suffix.lower(), dpi))
    finally:
        plt.close(fig)
    cells = {rc: tuple(round(v * scale) for v in box) for rc, box in cells.items()}
    return Rendered((fig_w, fig_h), cells)


def _draw(fig, layout, origin, total, interpolation):
    """One axes per panel, at its exact place in layout pixels (top-left of its cell); returns
    {(r, c): (top, left, height, width)} in layout pixels."""
    heights, widths = layout.sizes()
    total_w, total_h = total
    cells = {}
    y = origin[1]
    for r, row in enumerate(layout.grid):
        x = origin[0]
        for c, panel in enumerate(row):
            h, w = panel.shape[:2]
            cells[r, c] = (y, x, h, w)
            ax = fig.add_axes([x / total_w, 1 - (y + h) / total_h, w / total_w, h / total_h])
            ax.set_axis_off()
            ax.imshow(panel, interpolation=interpolation)
            if (r, c) in layout.missing:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=TITLE_PT,
                        color="0.35", transform=ax.transAxes)
            x += widths[c] + layout.gap
        y += heights[r] + layout.gap
    return cells


def size_note(rows):
    """The note for panels smaller than their sources (empty when every panel has its size)."""
    smaller = [n for row in rows for n in row.notes]
    if not smaller:
        return ""
    shown = ", ".join(smaller[:4]) + (f", ... ({len(smaller) - 4} more)" if len(smaller) > 4 else "")
    return f"Panels smaller than their sources are aligned top-left: {shown}"


def make_figure(a_dir, b_dir, fused_dirs, stems, out, zooms=(), placement="auto", factor=None,
                auto_size=None, transpose=False, dpi=300, width_in=WIDTHS["page"], scale=None,
                source_names=("IR", "VIS"), allow_missing=False):
    """Read, compose and render a comparison figure; returns (rows, boxes per row, Rendered)."""
    rows = load_rows(a_dir, b_dir, fused_dirs, stems, source_names, allow_missing)
    boxes = [row_boxes(row, zoom.boxes_for(zooms, row.stem), auto_size) for row in rows]
    # Composition draws every panel in a cell of its source size (a smaller panel, e.g. the
    # official /32 crop, top-left in it) and insets only add height, so the cells' widths give the
    # scale before the panels are made.
    cells = [[None if image is None else align_top_left(image, row.shape) for image in row.images]
             for row in rows]
    layout = build_layout(rows, cells, transpose)
    scale = scale or fit_scale(layout.sizes()[1], layout.gap, layout.row_titles, dpi, width_in)
    # Outlines about 1.5 output pixels wide whatever the panel-to-figure scale.
    thickness = max(1, math.ceil(1.5 / scale))
    panels = [compose_row(row, bx, placement, factor, thickness) for row, bx in zip(rows, boxes)]
    layout = build_layout(rows, panels, transpose)
    return rows, boxes, render(layout, out, dpi=dpi, scale=scale, note=size_note(rows))
