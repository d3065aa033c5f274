"""Zoom boxes for comparison figures: parse and check boxes, draw them, paste magnified insets.

Everything works on uint8 RGB arrays in source pixel coordinates, so what a figure shows can be
checked exactly: a box (x, y, w, h) is outlined on the panel, and the inset is the source region
repeated `factor` times in each direction (nearest neighbour, integer factor) inside a border of
the box's colour. `auto_boxes` picks the windows where the fused images disagree most.
"""
import numpy as np

MAX_BOXES = 3
# One colour per box (red, blue, green), distinguishable in colour and in most colour-blind vision.
BOX_COLOURS = ((228, 26, 28), (55, 126, 184), (77, 175, 74))
PLACEMENTS = ("auto", "br", "bl", "tr", "tl", "below")
CORNERS = ("br", "bl", "tr", "tl")
# Insets take at most this fraction of the panel height (in a corner / below the panel) and,
# side by side, of its width.
CORNER_HEIGHT = 0.4
BELOW_HEIGHT = 0.5
INSETS_WIDTH = 0.8
BACKGROUND = 255


class ZoomError(ValueError):
    """A zoom box that does not fit the images it is drawn on (one line)."""


def parse_box(text):
    """'[STEM:]x,y,w,h' or '[STEM:]auto' -> (stem or None, (x, y, w, h) or 'auto').

    Without a stem the box is drawn on every pair. Raises ValueError on anything else."""
    stem, _, spec = text.rpartition(":")
    if spec.strip().lower() == "auto":
        return stem or None, "auto"
    try:
        values = tuple(int(p) for p in spec.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] < 1 or values[3] < 1 or min(values[:2]) < 0:
        raise ValueError(f"zoom box {text!r}: expected [STEM:]x,y,w,h (whole numbers, w and h >= 1) "
                         f"or [STEM:]auto")
    return stem or None, values


def boxes_for(zooms, stem):
    """The boxes ('auto' or (x, y, w, h)) of one pair from a list of boxes, optionally given as
    (stem or None, box) as parse_box returns them."""
    chosen = []
    for item in zooms:
        target, box = item if len(item) == 2 else (None, item)
        if target in (None, stem):
            chosen.append(box)
    return chosen


def check_box(box, shape, where):
    """The box must lie inside an image of `shape` (H, W); raises ZoomError naming `where`."""
    x, y, w, h = box
    height, width = shape[:2]
    if x + w > width or y + h > height:
        raise ZoomError(f"zoom box {x},{y},{w},{h} lies outside {where} ({width}x{height} pixels)")


def inset_factor(box, shape, count, placement, border):
    """The largest integer magnification at which `count` insets (with a border) fit the panel."""
    _, _, w, h = box
    height, width = shape[:2]
    share = CORNER_HEIGHT if placement != "below" else BELOW_HEIGHT
    fit_w = (int(width * INSETS_WIDTH) // count - 2 * border) // w
    fit_h = (int(height * share) - 2 * border) // h
    if min(fit_w, fit_h) < 1:
        raise ZoomError(f"zoom box {w}x{h} is too large for {count} inset(s) on a {width}x{height} "
                        f"panel; use smaller boxes")
    return min(fit_w, fit_h)


def border_width(shape):
    """Outline width in source pixels: thin but visible once the panel is scaled into a figure."""
    return max(1, round(min(shape[:2]) / 160))


def magnify(crop, factor):
    """Nearest-neighbour magnification by an integer factor (each pixel becomes factor x factor)."""
    return np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)


def draw_outline(canvas, top, left, height, width, colour, thickness):
    """Outline the rectangle [top, top+height) x [left, left+width) inward, in place."""
    t = max(1, min(thickness, height // 2 or 1, width // 2 or 1))
    bottom, right = top + height, left + width
    canvas[top:top + t, left:right] = colour
    canvas[bottom - t:bottom, left:right] = colour
    canvas[top:bottom, left:left + t] = colour
    canvas[top:bottom, right - t:right] = colour


def _inset_origins(sizes, shape, placement, gap):
    """Top-left corners of the bordered insets (sizes: (h, w) each) on a panel of `shape`."""
    height, width = shape[:2]
    origins, offset = [], 0
    for h, w in sizes:
        if placement == "below":
            origins.append((height + gap, offset))
        else:
            top = height - h if placement[0] == "b" else 0
            left = width - offset - w if placement[1] == "r" else offset
            origins.append((top, left))
        offset += w + (gap if placement == "below" else 0)
    return origins


def _overlaps(a, b):
    """Do two (top, left, height, width) rectangles share a pixel?"""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def choose_placement(boxes, sizes, shape):
    """'auto': the first corner whose insets (bordered sizes) cover none of the boxes, else below."""
    rects = [(y, x, h, w) for x, y, w, h in boxes]
    for corner in CORNERS:
        origins = _inset_origins(sizes, shape, corner, 0)
        if not any(_overlaps((t, l, h, w), r) for (t, l), (h, w) in zip(origins, sizes) for r in rects):
            return corner
    return "below"


def compose_panel(image, boxes, placement="auto", factors=None, thickness=None):
    """Panel with every box outlined and its magnified inset pasted.

    image: (H, W, 3) uint8; boxes: [(x, y, w, h)]; placement: a corner (br, bl, tr, tl), below,
    or auto (choose_placement); factors: one integer per box (default: the largest that fits). Returns (canvas, insets) where insets lists the
    (top, left, height, width) of each inset's content (inside its border) on the canvas; with
    placement 'below' the canvas is taller than the image.
    """
    shape = image.shape
    thickness = thickness or border_width(shape)
    factors = factors or [inset_factor(b, shape, len(boxes), placement, thickness) for b in boxes]
    crops = [magnify(image[y:y + h, x:x + w], k) for (x, y, w, h), k in zip(boxes, factors)]
    sizes = [(c.shape[0] + 2 * thickness, c.shape[1] + 2 * thickness) for c in crops]
    if placement == "auto":
        placement = choose_placement(boxes, sizes, shape)
    gap = thickness if placement == "below" else 0
    if sum(s[1] for s in sizes) + gap * (len(sizes) - 1) > shape[1] or \
            max((s[0] for s in sizes), default=0) > shape[0]:
        raise ZoomError(f"insets magnified {factors} do not fit a {shape[1]}x{shape[0]} panel; "
                        f"use a smaller zoom factor")
    extra = gap + max((s[0] for s in sizes), default=0) if placement == "below" and boxes else 0
    canvas = np.full((shape[0] + extra, shape[1], 3), BACKGROUND, dtype=np.uint8)
    canvas[:shape[0]] = image
    for k, (x, y, w, h) in enumerate(boxes):
        draw_outline(canvas, y, x, h, w, BOX_COLOURS[k], thickness)
    insets = []
    for k, (crop, (top, left)) in enumerate(zip(crops, _inset_origins(sizes, shape, placement, gap))):
        bh, bw = sizes[k]
        canvas[top:top + bh, left:left + bw] = BOX_COLOURS[k]
        inner = (top + thickness, left + thickness, crop.shape[0], crop.shape[1])
        canvas[inner[0]:inner[0] + inner[2], inner[1]:inner[1] + inner[3]] = crop
        insets.append(inner)
    return canvas, insets


def _window_sums(values, h, w):
    """Sum of `values` over every h x w window -> (H-h+1, W-w+1), via an integral image."""
    total = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    total[1:, 1:] = values.cumsum(0).cumsum(1)
    return total[h:, w:] - total[:-h, w:] - total[h:, :-w] + total[:-h, :-w]


def auto_boxes(lumas, size, count=1):
    """The `count` non-overlapping windows of `size` (w, h) where the images disagree most.

    lumas: HxW arrays (cropped top-left to their common size); disagreement is the per-pixel
    variance across them, summed over the window. Returns [(x, y, w, h)], best first.
    """
    height = min(a.shape[0] for a in lumas)
    width = min(a.shape[1] for a in lumas)
    w, h = min(size[0], width), min(size[1], height)
    stack = np.stack([np.asarray(a, dtype=np.float64)[:height, :width] for a in lumas])
    score = _window_sums(stack.var(axis=0), h, w)
    boxes = []
    for _ in range(count):
        if not np.isfinite(score).any():
            break
        y, x = np.unravel_index(np.argmax(score), score.shape)
        boxes.append((int(x), int(y), w, h))
        # Windows overlapping this one are out for the next pick.
        score[max(0, y - h + 1):y + h, max(0, x - w + 1):x + w] = -np.inf
    return boxes


def default_auto_size(shape):
    """Auto-zoom window: a fifth of the shorter side, square (at least 8 px)."""
    side = max(8, min(shape[:2]) // 5)
    return side, side
