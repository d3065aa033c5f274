"""HTML reports: best values marked by each metric's direction, every pair and method listed,
thumbnails made once, evaluate.py --report, sample.py report=true, and a real headless browser."""
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import evaluate
import sample
from ddfm import methods
from ddfm.config import load_config
from ddfm.postrun import evaluate_and_report
from ddfm.present.report import HIGHER_IS_BETTER, THUMB_SIDE, write_report
from ddfm.savefolder.layout import Layout
from helpers import DIFFUSION_CONFIG, MODEL_CONFIG, read_png, write_png

STEMS = ("p1", "p2", "p3")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text):
        super().__init__()
        self.protocol, self.best, self.cells, self.imgs, self.pairs = None, set(), set(), [], {}
        self.links, self.body, self._pair, self._missing, self._text = [], {}, None, False, []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "metrics" in a.get("class", ""):
            self.protocol = a["data-protocol"]
        elif tag == "td" and "data-metric" in a:
            key = (self.protocol, a["data-metric"], a["data-method"])
            self.cells.add(key)
            if "best" in a.get("class", "").split():
                self.best.add(key)
        elif tag == "div" and a.get("class") == "pair":
            self._pair = a["data-stem"]
            self.pairs[self._pair] = []
        elif tag == "div" and a.get("class") == "panel" and self._pair:
            self.pairs[self._pair].append(a["data-method"])
        elif tag == "div" and a.get("class") == "missing":
            self._missing = True
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "a":
            self.links.append(a.get("href"))
        elif tag == "body":
            self.body = a

    def handle_data(self, data):
        if self._missing and data.strip():
            self._text.append((self._pair, self.pairs[self._pair][-1], data.strip()))
            self._missing = False


def _result(protocol, means):
    """A result dict whose per-image values average to `means` ({method: {metric: mean}})."""
    methods = {}
    for method, values in means.items():
        offsets = (-1.0, 0.0, 1.0)
        stems = STEMS if method != "C" else STEMS[:2]  # C lacks one stem (as with --allow-missing)
        offsets = offsets if method != "C" else (-1.0, 1.0)
        per_image = {s: {m: v + d * 0.01 for m, v in values.items()} for s, d in zip(stems, offsets)}
        methods[method] = {"mean": dict(values), "per_image": per_image}
    return {"protocol": protocol, "methods": methods}


def _folders(root, methods=("A", "B", "C")):
    rng = np.random.default_rng(3)
    for stem in STEMS:
        write_png(root / "ir" / f"{stem}.png", rng.integers(0, 256, (40, 300), dtype=np.uint8))
        write_png(root / "vi" / f"{stem}.png", rng.integers(0, 256, (40, 300, 3), dtype=np.uint8))
        for method in methods:
            if not (method == "C" and stem == "p3"):
                write_png(root / method / f"{stem}.png", rng.integers(0, 256, (40, 300), dtype=np.uint8))
    return {m: root / m for m in methods}


def _expected_best(result):
    best = set()
    metrics = next(iter(result["methods"].values()))["mean"]
    for metric in metrics:
        higher = HIGHER_IS_BETTER.get(metric)
        if higher is None:
            continue
        values = {m: d["mean"][metric] for m, d in result["methods"].items()}
        target = max(values.values()) if higher else min(values.values())
        best |= {(result["protocol"], metric, m) for m, v in values.items() if v == target}
    return best


def test_best_value_per_column_is_the_one_marked(tmp_path):
    fused = _folders(tmp_path)
    results = [
        _result("reference", {"A": {"EN": 6.1, "MSE": 900.0, "VIF": 0.7, "NEW": 3.0},
                              "B": {"EN": 6.9, "MSE": 1200.0, "VIF": 0.7, "NEW": 9.0},
                              "C": {"EN": 6.5, "MSE": 800.0, "VIF": 0.5, "NEW": 1.0}}),
        _result("corrected", {"A": {"EN": 7.0, "MSE": 10.0, "VIF": 0.9, "NEW": 3.0},
                              "B": {"EN": 6.9, "MSE": 5.0, "VIF": 0.2, "NEW": 9.0},
                              "C": {"EN": 6.5, "MSE": 8.0, "VIF": 0.95, "NEW": 1.0}}),
    ]
    page = Page(write_report(tmp_path / "rep", results, tmp_path / "ir", tmp_path / "vi", fused).read_text())
    expected = _expected_best(results[0]) | _expected_best(results[1])
    assert page.best == expected
    # spelled out: EN highest, MSE lowest, a VIF tie marks both, an unknown metric marks nothing
    assert ("reference", "EN", "B") in page.best and ("reference", "MSE", "C") in page.best
    assert {("reference", "VIF", "A"), ("reference", "VIF", "B")} <= page.best
    assert not any(metric == "NEW" for _, metric, _ in page.best)
    assert len(page.cells) == 2 * 3 * 4
    text = (tmp_path / "rep" / "index.html").read_text()
    assert "Protocol: reference" in text and "Protocol: corrected" in text
    assert "EN \u2191" in text and "MSE \u2193" in text and "NEW ?" in text
    assert "n=2 of 3" in text  # C's mean is over the two images it has


def test_report_lists_every_pair_and_method_and_makes_thumbnails_once(tmp_path):
    fused = _folders(tmp_path)
    results = [_result("reference", {m: {"EN": 6.0 + k} for k, m in enumerate(fused)})]
    index = write_report(tmp_path / "rep", results, tmp_path / "ir", tmp_path / "vi", fused)
    page = Page(index.read_text())
    assert list(page.pairs) == list(STEMS)
    for stem in STEMS:
        assert page.pairs[stem] == ["IR", "VIS", "A", "B", "C"]
    assert page.body == {}  # the counters are set by the page's script only
    assert page._text == [("p3", "C", "missing")]
    thumbs = [img for img in page.imgs if img.get("loading") == "lazy"]
    assert len(thumbs) == 3 * 5 - 1
    for img in thumbs:
        image = read_png_or_jpeg(index.parent / img["src"])
        assert max(image.shape[:2]) <= THUMB_SIDE and image.shape[1] == int(img["width"])
    # every thumbnail links to a full copy identical to its source file
    fulls = [href for href in page.links if href.startswith("images/")]
    assert len(fulls) == len(thumbs)
    copy = next(h for h in fulls if "/p2." in h and h.startswith("images/B-"))
    assert (index.parent / copy).read_bytes() == (tmp_path / "B" / "p2.png").read_bytes()
    # a second report reuses the thumbnails instead of making them again
    stamps = {p: p.stat().st_mtime_ns for p in (index.parent / "thumbs").rglob("*.jpg")}
    write_report(tmp_path / "rep", results, tmp_path / "ir", tmp_path / "vi", fused)
    assert {p: p.stat().st_mtime_ns for p in (index.parent / "thumbs").rglob("*.jpg")} == stamps


def read_png_or_jpeg(path):
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image)


def test_evaluate_report_flag_end_to_end(tmp_path, capsys):
    fused = _folders(tmp_path, methods=("A", "B"))
    args = ["--ir", tmp_path / "ir", "--vi", tmp_path / "vi", "--fused", f"A={fused['A']}",
            "--fused", f"B={fused['B']}", "--metrics", "EN,SD,MSE", "--report", tmp_path / "rep"]
    assert evaluate.main([str(a) for a in args]) == 0
    text = (tmp_path / "rep" / "index.html").read_text()
    page = Page(text)
    result = json.loads(json.dumps(_scores(tmp_path, fused)))
    assert page.best == _expected_best(result)
    assert "<table class=\"sortable per-image\"" in text and "Protocol: reference" in text
    assert re.search(r'<img src="plots/[^"]+\.png"', text)
    # an unwritable report folder: one line, exit 1, the table was still printed
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    args[-1] = blocker / "rep"
    capsys.readouterr()
    assert evaluate.main([str(a) for a in args]) == 1
    out, err = capsys.readouterr()
    assert "method" in out and len(err.strip().splitlines()) == 1 and err.startswith("error:")


def _scores(root, fused):
    from ddfm.metrics.evaluation import evaluate_folders
    return evaluate_folders(root / "ir", root / "vi", fused, metrics=["EN", "SD", "MSE"])


def test_sample_report_true_has_the_run_settings(tmp_path):
    rng = np.random.default_rng(0)
    for stem in ("x", "y"):
        write_png(tmp_path / "in" / "ir" / f"{stem}.png", rng.integers(0, 256, (48, 56), dtype=np.uint8))
        write_png(tmp_path / "in" / "vi" / f"{stem}.png", rng.integers(0, 256, (48, 56), dtype=np.uint8))
    out = tmp_path / "out"
    code = sample.main(["--input_dir", str(tmp_path / "in"), "--save_dir", str(out), "--quiet",
                        "prior=none", "report=true", "seed=11"])
    assert code == 0
    page_text = (out / "report" / "index.html").read_text()
    page = Page(page_text)
    assert list(page.pairs) == ["x", "y"] and page.pairs["x"] == ["ir", "vi", "prior-free"]
    # a prior-free run records the seed among the settings that had no effect
    assert "<dt>prior</dt><dd>none</dd>" in page_text and "<dt>seed</dt>" not in page_text
    ignored = page_text.split("<dt>settings without effect</dt><dd>")[1].split("</dd>")[0]
    assert "seed" in ignored.split(", ") and "color" not in ignored
    assert ("reference", "EN", "prior-free") in page.best
    # report must be true or false; a report that cannot be written fails the run (exit 1)
    base = ["--input_dir", str(tmp_path / "in"), "--quiet", "prior=none"]
    assert sample.main(base + ["--save_dir", str(out), "report=maybe"]) == 2
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "report").write_text("a file where the report folder should go")
    assert sample.main(base + ["--save_dir", str(tmp_path / "out2"), "report=true"]) == 1
    assert (tmp_path / "out2" / "recon" / "x.png").exists()


def test_run_report_reads_run_json_defensively_and_shows_the_gif(tmp_path):
    rng = np.random.default_rng(1)
    for stem in ("x", "y"):
        for mod in ("ir", "vi"):
            write_png(tmp_path / "in" / mod / f"{stem}.png", rng.integers(0, 256, (40, 48), dtype=np.uint8))
        write_png(tmp_path / "out" / "recon" / f"{stem}.png", rng.integers(0, 256, (40, 48), dtype=np.uint8))
    from PIL import Image
    frames = [Image.fromarray(np.full((40, 48), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "out" / "progress.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "out" / "progress").mkdir()
    (tmp_path / "out" / "progress.gif").rename(tmp_path / "out" / "progress" / "x.gif")
    # a layout run.json may take: nested timings, a prior given as a plain string, unknown keys
    record = {"prior": "adm", "fused": {"x": {"seconds": 2.5}, "y": 1.5}, "seed": 7, "new": [1]}
    (tmp_path / "out" / "run.json").write_text(json.dumps(record))
    config = load_config(MODEL_CONFIG, DIFFUSION_CONFIG, None, [("input_dir", str(tmp_path / "in")), ("report", True)])
    sources, index = (tmp_path / "in" / "ir", tmp_path / "in" / "vi"), tmp_path / "out" / "report" / "index.html"
    assert evaluate_and_report(config, Layout(tmp_path / "out"), methods.get("ddfm"), sources, log=lambda m: None) == ("", False)
    text = index.read_text()
    page = Page(text)
    assert page.pairs["x"] == ["ir", "vi", "DDFM", "sampling"] and page.pairs["y"] == ["ir", "vi", "DDFM"]
    assert (index.parent / "gifs" / "x.gif").read_bytes() == (tmp_path / "out" / "progress" / "x.gif").read_bytes()
    assert "<dt>prior</dt><dd>adm</dd>" in text and "<dt>seconds in total</dt><dd>4.00</dd>" in text
    assert "(fused in 2.500 s)" in text
    (tmp_path / "out" / "run.json").write_text("{broken")
    index.unlink()
    assert evaluate_and_report(config, Layout(tmp_path / "out"), methods.get("ddfm"), sources, log=lambda m: None) == ("", False)
    assert index.is_file()


def _chromium(tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    proc = subprocess.run([CHROMIUM, *flags, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI", "").lower() not in ("true", "1"),
                    reason="headless Chromium not installed (CI installs it: .ci/run)")
def test_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM is not None, "CI must have Chromium (.ci/run installs it)"
    fused = _folders(tmp_path)
    results = [_result("reference", {m: {"EN": 6.0 + k, "MSE": 9.0 - k} for k, m in enumerate(fused)})]
    index = write_report(tmp_path / "rep", results, tmp_path / "ir", tmp_path / "vi", fused)
    url = index.resolve().as_uri()
    # A window tall enough that every lazy thumbnail is in view and loads.
    dom = _chromium(tmp_path, "--window-size=1400,6000", "--virtual-time-budget=10000", "--dump-dom", url)
    body = dict(re.findall(r'data-images-(\w+)="(\d+)"', re.search(r"<body[^>]*>", dom).group(0)))
    total = len(Page(index.read_text()).imgs)
    assert int(body["total"]) == total == (3 * 5 - 1) + 1  # thumbnails (one missing) + the plot
    assert int(body["loaded"]) == total and int(body["broken"]) == 0
    assert '<table class="metrics"' in dom and "Protocol: reference" in dom
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--window-size=1000,700", f"--screenshot={shot}", url)
    pixels = read_png(shot)[..., :3].astype(int)
    assert pixels.shape[:2] == (700, 1000)
    # the page is not blank: dark text and the green best-value cells are on screen
    assert (pixels.sum(axis=2) < 200).mean() > 0.002
    green = (pixels[..., 1] > 220) & (pixels[..., 0] < 215) & (pixels[..., 0] > 185)
    assert green.sum() > 50


def test_every_metric_of_every_protocol_has_a_direction():
    from ddfm.metrics import ALL_PROTOCOLS, protocol_metrics
    names = {m for p in ALL_PROTOCOLS for m in protocol_metrics(p, extras=True)}
    assert {"Nabf", "MS_SSIM"} <= names
    assert {m for m in names if m not in HIGHER_IS_BETTER} == set()
    assert HIGHER_IS_BETTER["Nabf"] is False and HIGHER_IS_BETTER["MS_SSIM"] is True
