"""table.py and ddfm/present/ (table, results, formats, published): the paper comparison table (ranks, rounding, published rows, errors)."""
import json
import math
import re
import shutil
import subprocess
from decimal import Decimal

import pytest

import table as table_cli
from ddfm.present.published import load_published
from ddfm.present.table import MISSING, rank_column, round_half_away


def write_metrics(path, methods, protocol="reference", pairs=2):
    """An evaluate.py --json file: each method's per-image values all equal its mean."""
    data = {"protocol": protocol, "methods": {
        name: {"mean": dict(mean), "per_image": {f"p{k}": dict(mean) for k in range(pairs)}, "missing": []}
        for name, mean in methods.items()}}
    path.write_text(json.dumps(data))
    return path


def eight(**values):
    base = {"EN": 6.0, "SD": 30.0, "SF": 10.0, "MI": 2.0, "SCD": 1.5, "VIF": 0.5, "Qabf": 0.5, "SSIM": 1.0}
    return base | values


def run(argv, capsys):
    code = table_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def cells_of(markdown, method):
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {method} "))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_round_half_away_from_zero_and_no_negative_zero():
    assert round_half_away(2.675, 2) == Decimal("2.68")  # float 2.675 prints as 2.675: half goes up
    assert round_half_away(-0.125, 2) == Decimal("-0.13") and round_half_away(0.125, 2) == Decimal("0.13")
    assert str(round_half_away(-0.0004, 2)) == "0.00"
    assert round_half_away(float("nan"), 2) is None and round_half_away(None, 2) is None


def test_rank_column_marks_best_and_second_with_ties_and_direction():
    values = {"a": Decimal("1.0"), "b": Decimal("2.0"), "c": Decimal("2.0"), "d": Decimal("0.5"), "e": None}
    assert rank_column(values, True) == {"b": 1, "c": 1, "a": 2}
    assert rank_column(values, False) == {"d": 1, "a": 2}


def test_bold_underline_ties_lower_is_better_and_nan(tmp_path, capsys):
    path = write_metrics(tmp_path / "m.json", {
        "A": eight(EN=7.004, SD=float("nan"), MSE=10.0), "B": eight(EN=7.0, SD=40.0, MSE=5.0),
        "C": eight(EN=6.5, SD=35.0, MSE=20.0)})
    code, out, err = run(["--json", f"TNO={path}", "--metrics", "EN,SD,MSE"], capsys)
    assert code == 0, err
    a, b, c = cells_of(out, "A"), cells_of(out, "B"), cells_of(out, "C")
    assert a[0] == b[0] == "**7.00**" and c[0] == "<ins>6.50</ins>"  # a tie as printed shares the best
    assert a[1] == MISSING and b[1] == "**40.00**" and c[1] == "<ins>35.00</ins>"  # NaN: a dash, unranked
    assert b[2] == "**5.00**" and a[2] == "<ins>10.00</ins>" and c[2] == "20.00"  # MSE: lower is better
    assert "MSE↓" in out and "EN↑" in out


def test_numbers_equal_the_json_rounded_as_asked_with_std(tmp_path, capsys):
    data = {"protocol": "reference", "methods": {"A": {"mean": eight(EN=6.12345), "missing": [],
            "per_image": {"p0": eight(EN=6.0), "p1": eight(EN=6.2469)}}}}
    (tmp_path / "m.json").write_text(json.dumps(data))
    code, out, _ = run(["--json", f"TNO={tmp_path / 'm.json'}", "--metrics", "EN", "--decimals", "3", "--std"], capsys)
    std = math.sqrt(((6.0 - 6.12345) ** 2 + (6.2469 - 6.12345) ** 2))
    assert code == 0 and f"6.123 ± {round_half_away(std, 3)}" in cells_of(out, "A")[0]


def test_csv_and_latex_structure(tmp_path, capsys):
    tno = write_metrics(tmp_path / "tno.json", {"A": eight(), "B_x": eight(EN=7.0)})
    mri = write_metrics(tmp_path / "mri.json", {"A": eight(), "B_x": eight(SD=10.0)}, pairs=3)
    tex, csv_path = tmp_path / "t.tex", tmp_path / "t.csv"
    code, _, err = run(["--json", f"TNO={tno}", "--json", f"MRI_CT={mri}", "--published", "CDDFuse",
                        "--out", tex, "--out", csv_path], capsys)
    assert code == 0, err
    text = tex.read_text()
    body = text[text.index(r"\begin{tabular}"):text.index(r"\end{tabular}")]
    spec, depth = "", 0
    for char in body[len(r"\begin{tabular}{"):]:  # the column spec, up to its matching brace
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            break
        spec += char
    columns = len(re.sub(r"@\{\\hspace\{[^}]*\}\}", "", spec))
    assert columns == 1 + 2 * 8
    for line in body.split(r"\\")[1:]:
        line = line.replace(r"\midrule", "").replace(r"\bottomrule", "").strip()
        if not line or line.startswith(r"\cmidrule") and "&" not in line:
            continue
        spans = sum(int(n) - 1 for n in re.findall(r"\\multicolumn\{(\d+)\}", line))
        assert line.count("&") + 1 + spans == columns, line
    assert text.count("{") == text.count("}")
    assert r"\multicolumn{8}{c}{TNO}" in text and r"B\_x" in text and r"\textit{CDDFuse}$^\dagger$" in text
    assert "MMIF-CDDFuse, README.md" in text and "TNO 2, MRI\\_CT 3" in text  # source and pairs stated
    import csv
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == (2 + 1) * 2 * 8  # long format: row x dataset x metric
    published = [r for r in rows if r["method"] == "CDDFuse"]
    assert published and all("MMIF-CDDFuse" in r["source"] for r in published)
    en = {(r["method"], r["dataset"]): r for r in rows if r["metric"] == "EN"}
    assert en[("B_x", "TNO")]["value"] == "7.00" and en[("B_x", "TNO")]["rank"] == "1"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installed")
def test_latex_compiles(tmp_path, capsys):
    tno = write_metrics(tmp_path / "tno.json", {"A": eight(), "B": eight(EN=7.0)})
    tex = tmp_path / "t.tex"
    assert run(["--json", f"TNO={tno}", "--published", "CDDFuse", "--standalone", "--out", tex], capsys)[0] == 0
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000


def test_published_rows_carry_their_source_and_dialect_is_checked(tmp_path, capsys):
    tang = write_metrics(tmp_path / "tang.json", {"A": eight()}, protocol="tang")
    code, _, err = run(["--json", f"TNO={tang}", "--published", "CDDFuse"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "reference dialect" in err and "--allow-dialect-mismatch" in err
    code, out, err = run(["--json", f"TNO={tang}", "--published", "CDDFuse", "--allow-dialect-mismatch"], capsys)
    assert code == 0 and "CDDFuse" in out and "reference" in out.split("CDDFuse")[-1]
    published = {(r.method, r.dataset): r for r in load_published()}
    assert published[("CDDFuse", "TNO")].values["SD"] == 46.0 and published[("DDFM", "TNO")].values["SF"] is None


def test_ranking_over_published_rows_when_asked(tmp_path, capsys):
    tno = write_metrics(tmp_path / "tno.json", {"A": eight(EN=6.0), "B": eight(EN=5.0)})
    _, out, _ = run(["--json", f"TNO={tno}", "--published", "CDDFuse", "--metrics", "EN"], capsys)
    assert cells_of(out, "A")[0] == "**6.00**"
    _, out, _ = run(["--json", f"TNO={tno}", "--published", "CDDFuse", "--metrics", "EN", "--rank", "all"], capsys)
    assert cells_of(out, "A")[0] == "<ins>6.00</ins>" and "published ones included" in out


def test_results_layout_needs_no_typing_per_cell(tmp_path, capsys):
    for method, en in (("ours", 7.0), ("base", 6.0)):
        for dataset in ("TNO", "MRI_CT"):
            (tmp_path / "r" / method / dataset).mkdir(parents=True)
            write_metrics(tmp_path / "r" / method / dataset / "metrics.json", {method: eight(EN=en)})
    code, out, err = run(["--results", tmp_path / "r", "--metrics", "EN"], capsys)
    assert code == 0, err
    assert cells_of(out, "ours") == ["**7.00**", "**7.00**"] and cells_of(out, "base") == ["<ins>6.00</ins>"] * 2


def test_bad_inputs_are_one_line(tmp_path, capsys):
    good = write_metrics(tmp_path / "good.json", {"A": eight(), "B": eight()})
    only_a = write_metrics(tmp_path / "a.json", {"A": eight()})
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "empty.json").write_text(json.dumps({"protocol": "reference", "methods": {
        "A": {"mean": eight(), "per_image": {}, "missing": ["p0"]}}}))
    cases = [(["--json", f"TNO={tmp_path / 'nope.json'}"], 1, "not found"),
             (["--json", f"TNO={tmp_path / 'other.json'}"], 1, "expected evaluate.py --json output"),
             (["--json", f"TNO={tmp_path / 'empty.json'}"], 1, "no scored pairs"),
             (["--json", f"TNO={good}", "--json", f"RS={only_a}"], 1, "B"),
             (["--json", f"TNO={good}", "--metrics", "EN,Foo"], 2, "Foo")]
    for argv, code, needle in cases:
        got, _, err = run(argv, capsys)
        assert got == code and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
    got, out, err = run(["--json", f"TNO={good}", "--json", f"RS={only_a}", "--allow-missing"], capsys)
    assert got == 0 and MISSING in cells_of(out, "B")


def test_metrics_files_can_be_written_into_a_new_folder(tmp_path):
    from ddfm.metrics.evaluation import write_csv, write_json
    result = {"protocol": "reference", "methods": {"A": {"mean": eight(), "per_image": {"p0": eight()}, "missing": []}}}
    write_json(result, tmp_path / "new" / "m.json")
    write_csv(result, tmp_path / "other" / "m.csv")
    assert json.loads((tmp_path / "new" / "m.json").read_text())["methods"]["A"]["mean"]["EN"] == 6.0
    assert (tmp_path / "other" / "m.csv").read_text().startswith("protocol,method,image")
