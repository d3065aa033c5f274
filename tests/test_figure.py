"""Comparison figures: exact insets and outlines, auto zoom, rendered PNG/PDF, bad input."""
from pathlib import Path

import numpy as np
import pytest

import figure
from ddfm.present import zoom
from ddfm.present.figure import MISSING_GREY, WIDTHS, compose_row, load_rows, make_figure, row_boxes
from helpers import read_png, write_png

BOXES = [(5, 7, 6, 4), (40, 20, 5, 5)]


def _image(seed, shape=(64, 80, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _magnified(image, box, factor):
    x, y, w, h = box
    crop = image[y:y + h, x:x + w]
    out = np.empty((h * factor, w * factor) + image.shape[2:], image.dtype)
    for i in range(h * factor):  # spelled out, independently of zoom.magnify
        for j in range(w * factor):
            out[i, j] = crop[i // factor, j // factor]
    return out


@pytest.mark.parametrize("placement", zoom.PLACEMENTS)
def test_inset_pixels_equal_the_magnified_source_region(placement):
    image = _image(0)
    canvas, insets = zoom.compose_panel(image, BOXES, placement, thickness=1)
    assert len(insets) == len(BOXES)
    for box, (top, left, h, w) in zip(BOXES, insets):
        factor = h // box[3]
        assert factor >= 2 and h == box[3] * factor and w == box[2] * factor
        np.testing.assert_array_equal(canvas[top:top + h, left:left + w], _magnified(image, box, factor))
    if placement == "below":  # the panel itself is untouched apart from the outlines
        assert canvas.shape[0] > image.shape[0]
    # Explicit factors are honoured.
    canvas, insets = zoom.compose_panel(image, BOXES, placement, factors=[2, 3], thickness=1)
    for box, (top, left, h, w), factor in zip(BOXES, insets, (2, 3)):
        np.testing.assert_array_equal(canvas[top:top + h, left:left + w], _magnified(image, box, factor))


def test_auto_placement_takes_a_corner_that_hides_no_box():
    image = _image(2)
    for boxes, corner in [([(60, 50, 8, 6)], "bl"), ([(60, 50, 8, 6), (2, 50, 8, 6)], "tr"),
                          ([(2, 2, 6, 6)], "br")]:
        _, insets = zoom.compose_panel(image, boxes, "auto", thickness=1)
        _, expected = zoom.compose_panel(image, boxes, corner, thickness=1)
        assert insets == expected
    # Three insets 22 px wide span 66 of 80 px: every corner would cover one of these boxes.
    blocking = [(0, 54, 10, 10), (70, 54, 10, 10), (35, 0, 10, 10)]
    canvas, _ = zoom.compose_panel(image, blocking, "auto", factors=[2] * 3, thickness=1)
    assert canvas.shape[0] > image.shape[0]  # below the panel


def test_outline_is_drawn_on_the_box_border_only():
    image = _image(1)
    canvas, _ = zoom.compose_panel(image, BOXES[:1], "below", thickness=1)
    x, y, w, h = BOXES[0]
    colour = zoom.BOX_COLOURS[0]
    border = np.zeros(image.shape[:2], bool)
    border[y, x:x + w] = border[y + h - 1, x:x + w] = True
    border[y:y + h, x] = border[y:y + h, x + w - 1] = True
    assert (canvas[:64][border] == colour).all()
    np.testing.assert_array_equal(canvas[:64][~border], image[~border])


def _dataset(root, methods=("m1", "m2", "m3"), stems=("a", "b"), shape=(64, 80)):
    for k, stem in enumerate(stems):
        write_png(root / "ir" / f"{stem}.png", _image(10 * k, shape))
        write_png(root / "vi" / f"{stem}.png", _image(10 * k + 1, shape + (3,)))
        for j, method in enumerate(methods):
            write_png(root / method / f"{stem}.png", _image(10 * k + 2 + j, shape + (3,)))
    return {m: root / m for m in methods}


def test_rectangle_is_at_the_same_place_on_every_panel(tmp_path):
    fused = _dataset(tmp_path)
    rows = load_rows(tmp_path / "ir", tmp_path / "vi", fused, ["a", "b"])
    for row in rows:
        panels = compose_row(row, BOXES, "br", thickness=1)
        assert len(panels) == 5
        for box, colour in zip(BOXES, zoom.BOX_COLOURS):
            x, y, w, h = box
            for panel, source in zip(panels, row.images):
                assert (panel[y, x:x + w] == colour).all() and (panel[y + h - 1, x:x + w] == colour).all()
                assert (panel[y:y + h, x] == colour).all() and (panel[y:y + h, x + w - 1] == colour).all()
                # just inside and just outside the outline the source shows through
                np.testing.assert_array_equal(panel[y + 1, x + 1:x + w - 1], source[y + 1, x + 1:x + w - 1])
                np.testing.assert_array_equal(panel[y - 1, x:x + w], source[y - 1, x:x + w])


def test_auto_zoom_finds_the_planted_disagreement(tmp_path):
    rng = np.random.default_rng(5)
    base = rng.integers(60, 200, (96, 128), dtype=np.uint8)
    write_png(tmp_path / "ir" / "s.png", base)
    write_png(tmp_path / "vi" / "s.png", 255 - base)  # sources differ everywhere: must not matter
    for j in range(3):
        fused = base.copy()
        fused[30:50, 70:90] = rng.integers(0, 256, (20, 20))  # methods disagree only here
        write_png(tmp_path / f"m{j}" / "s.png", fused)
    fused_dirs = {f"m{j}": tmp_path / f"m{j}" for j in range(3)}
    row = load_rows(tmp_path / "ir", tmp_path / "vi", fused_dirs, ["s"])[0]
    assert row_boxes(row, ["auto"], auto_size=(20, 20)) == [(70, 30, 20, 20)]
    first, second = row_boxes(row, ["auto", "auto"], auto_size=(16, 12))
    assert 70 <= first[0] <= 74 and 30 <= first[1] <= 38  # inside the planted square
    assert abs(second[0] - first[0]) >= 16 or abs(second[1] - first[1]) >= 12  # no overlap


def _find_panel(out, cells, key, panel):
    top, left, h, w = cells[key]
    assert (h, w) == panel.shape[:2]
    np.testing.assert_array_equal(out[top:top + h, left:left + w], panel)
    return top, left


def test_boxes_for_one_stem_or_every_stem():
    zooms = [zoom.parse_box("1,2,3,4"), zoom.parse_box("b:5,6,7,8"), zoom.parse_box("a:auto")]
    assert zooms == [(None, (1, 2, 3, 4)), ("b", (5, 6, 7, 8)), ("a", "auto")]
    assert zoom.boxes_for(zooms, "a") == [(1, 2, 3, 4), "auto"]
    assert zoom.boxes_for(zooms, "b") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert zoom.boxes_for([(1, 2, 3, 4), "auto"], "c") == [(1, 2, 3, 4), "auto"]  # plain boxes


def test_rendered_png_shows_panels_and_insets_pixel_exact(tmp_path):
    fused = _dataset(tmp_path, methods=("m1", "m2"))
    out = tmp_path / "fig.png"
    rows, boxes, drawn = make_figure(tmp_path / "ir", tmp_path / "vi", fused, ["a", "b"], out,
                                     zooms=BOXES, scale=1, dpi=100)
    png = read_png(out)[..., :3]
    assert png.shape[:2] == drawn.size[::-1]
    thickness = 2  # ceil(1.5 / scale)
    for r, row in enumerate(rows):
        for c, source in enumerate(row.images):
            panel, insets = zoom.compose_panel(source, BOXES, "auto", thickness=thickness)
            top, left = _find_panel(png, drawn.cells, (r, c), panel)
            for box, (it, il, h, w) in zip(BOXES, insets):
                region = png[top + it:top + it + h, left + il:left + il + w]
                np.testing.assert_array_equal(region, _magnified(source, box, h // box[3]))
    # Transposed: pairs become columns.
    _, _, flipped = make_figure(tmp_path / "ir", tmp_path / "vi", fused, ["a", "b"], out,
                                zooms=BOXES, scale=1, dpi=100, transpose=True)
    assert max(flipped.cells) == (3, 1) and max(drawn.cells) == (1, 3)


def test_smaller_panel_is_aligned_top_left_with_a_note(tmp_path):
    fused = _dataset(tmp_path, methods=("full",), stems=("a",))
    cropped = read_png(tmp_path / "full" / "a.png")[:32, :64]
    write_png(tmp_path / "official" / "a.png", cropped)
    fused["official"] = tmp_path / "official"
    out = tmp_path / "fig.png"
    rows, _, drawn = make_figure(tmp_path / "ir", tmp_path / "vi", fused, ["a"], out, scale=1, dpi=100)
    assert rows[0].notes == ["official 'a' 64x32"]
    png = read_png(out)[..., :3]
    top, left, h, w = drawn.cells[0, 3]
    np.testing.assert_array_equal(png[top:top + 32, left:left + 64], cropped)
    assert (png[top + 32:top + h, left:left + w] == 255).all()



@pytest.mark.parametrize("dpi", [100, 300])
def test_figure_width_is_the_requested_width_with_a_cropped_method(tmp_path, dpi):
    """A method whose images are /32-cropped (64x32 of 80x64) is drawn in a cell of the source
    size: the scale must come from the source widths, or the figure overshoots the page."""
    fused = _dataset(tmp_path, methods=("full",), stems=("a",))
    write_png(tmp_path / "official" / "a.png", read_png(tmp_path / "full" / "a.png")[:32, :64])
    fused["official"] = tmp_path / "official"
    out = tmp_path / "fig.png"
    _, _, drawn = make_figure(tmp_path / "ir", tmp_path / "vi", fused, ["a"], out, dpi=dpi,
                              width_in=WIDTHS["page"])
    assert drawn.size[0] == round(WIDTHS["page"] * dpi)  # 716 px at 100 dpi, 2148 px at 300
    assert read_png(out).shape[1] == drawn.size[0]
    assert drawn.cells[0, 3][3] == drawn.cells[0, 2][3]  # the cropped column is as wide as the full one

def _cli(capsys, *args):
    code = figure.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _base_args(root, *methods):
    args = ["--ir", root / "ir", "--vi", root / "vi"]
    for m in methods:
        args += ["--fused", f"{m}={root / m}"]
    return args


def test_cli_png_pdf_and_allow_missing(tmp_path, capsys):
    _dataset(tmp_path, methods=("m1", "m2"))
    (tmp_path / "m2" / "b.png").unlink()
    code, out, err = _cli(capsys, *_base_args(tmp_path, "m1", "m2"), "--stems", "a",
                          "--zoom", "5,7,6,4", "--zoom", "auto", "--out", tmp_path / "f.pdf")
    assert code == 0, err
    assert (tmp_path / "f.pdf").read_bytes().startswith(b"%PDF")
    args = [*_base_args(tmp_path, "m1", "m2"), "--stems", "a,b", "--scale", "1", "--dpi", "100"]
    code, _, err = _cli(capsys, *args, "--out", tmp_path / "f.png")
    assert code == 1 and "method 'm2': stem 'b' missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f.png").exists()
    code, _, err = _cli(capsys, *args, "--allow-missing", "--out", tmp_path / "f.png")
    assert code == 0, err
    png = read_png(tmp_path / "f.png")[..., :3]
    # the missing panel (row b, column m2) is grey apart from its label
    rows, _, drawn = make_figure(tmp_path / "ir", tmp_path / "vi", {m: tmp_path / m for m in ("m1", "m2")},
                                 ["a", "b"], tmp_path / "g.png", scale=1, dpi=100, allow_missing=True)
    top, left, h, w = drawn.cells[1, 3]
    assert (png[top:top + 5, left:left + w] == MISSING_GREY).all()
    assert (png[top + h // 2 - 3:top + h // 2 + 3, left:left + w] != MISSING_GREY).any()  # the word


@pytest.mark.parametrize("extra, code, message", [
    (["--stems", "zz"], 1, "stem 'zz' not found"),
    (["--stems", "a", "--zoom", "70,0,20,10"], 1, "lies outside pair 'a' (80x64 pixels)"),
    (["--stems", "a"] + ["--zoom", "1,1,2,2"] * 4, 2, "at most 3 boxes"),
    (["--stems", "a", "--zoom", "1,2,3"], 2, "expected [STEM:]x,y,w,h"),
    (["--stems", "a", "--zoom", "zz:1,1,2,2"], 2, "stem(s) zz that --stems does not show"),
    (["--stems", "a", "--inset", "middle"], 2, "invalid choice"),
])
def test_cli_bad_input_is_one_line_and_keeps_the_old_output(tmp_path, capsys, extra, code, message):
    _dataset(tmp_path, methods=("m1",))
    out = tmp_path / "keep.png"
    out.write_bytes(b"previous figure")
    try:
        got, _, err = _cli(capsys, *_base_args(tmp_path, "m1"), *extra, "--out", out)
    except SystemExit as exc:  # argparse errors exit 2 with a usage line
        got, err = exc.code, capsys.readouterr().err
    assert got == code and message in err
    assert out.read_bytes() == b"previous figure"
    if code == 1:
        assert len(err.strip().splitlines()) == 1


def test_cli_unwritable_output_and_wrong_extension(tmp_path, capsys):
    _dataset(tmp_path, methods=("m1",))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code, _, err = _cli(capsys, *_base_args(tmp_path, "m1"), "--stems", "a", "--out", blocker / "f.png")
    assert code == 1 and err.startswith("error: cannot write") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        figure.main([*map(str, _base_args(tmp_path, "m1")), "--stems", "a", "--out", str(tmp_path / "f.jpg")])
    assert exc.value.code == 2
    assert not list(Path(tmp_path).glob("*.tmp")) and not list(Path(tmp_path).glob(".*.tmp"))


def test_baselines_are_the_mean_and_max_of_the_sources_luma(tmp_path):
    from ddfm.methods.baselines.pixels import write_baselines
    ir, vi = _image(7, (20, 24)), _image(8, (20, 24))
    write_png(tmp_path / "ir" / "s.png", ir)
    write_png(tmp_path / "vi" / "s.png", vi)
    assert write_baselines(tmp_path / "ir", tmp_path / "vi", tmp_path / "out") == 1
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "max" / "s.png"), np.maximum(ir, vi))
    np.testing.assert_array_equal(read_png(tmp_path / "out" / "mean" / "s.png"),
                                  (ir.astype(int) + vi) // 2)
