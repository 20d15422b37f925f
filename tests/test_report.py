"""The demo report is written from a (fake) session history."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from xmodal.demo.figures import metric_names
from xmodal.demo.report import load_history, thumbnail_uri, write_report
from xmodal.errors import DataError


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), colour).save(p)
        paths.append(p)
    return paths


def fake_history(images):
    rng = np.random.default_rng(0)
    curve = []
    for k in range(2, 9):
        point = {"labels": k, "index_version": k + 1, "elapsed_s": 1.5 * k, "methods": {}}
        for method, base in (("ssm-al", 0.3), ("random", 0.2), ("cca", 0.1)):
            point["methods"][method] = {
                "recall@10_i2t": base + 0.03 * k, "recall@10_t2i": base + 0.02 * k,
                "map_i2t": base / 2 + float(rng.random()) * 0.01, "map_t2i": base / 2}
        curve.append(point)
    curve[0]["methods"]["cca"]["map_t2i"] = float("nan")  # a missing value is shown as –
    return {
        "title": "test demo",
        "dataset": {"name": "synthetic", "n_images": 4, "n_texts": 4, "source": "/x"},
        "settings": {"select": "image", "encoders": {"image": "efficientnet-lite0", "text": "sif"}},
        "timings": {"total_s": 12.3, "bootstrap_s": 4.0},
        "chance": {"recall@10": 0.1},
        "curve": curve,
        "medoids": [{"rank": i + 1, "image_id": p.name, "image_path": str(p), "text_id": f"t{i}",
                     "text": f"caption <{i}> & more"} for i, p in enumerate(images)],
        "examples": {
            "text_to_image": [{"query": "a red square", "query_id": "t0", "truth": ["im0.png"],
                               "results": [{"id": p.name, "path": str(p), "score": 0.9 - 0.1 * i}
                                           for i, p in enumerate(images)]}],
            "image_to_text": [{"query": "im1.png", "query_path": str(images[1]), "truth": ["t1"],
                               "results": [{"id": f"t{i}", "text": f"caption {i}", "score": 0.5}
                                           for i in range(3)]}],
        },
        "notes": ["a note"],
        "session": {"annotator": "human", "how": {"shown": 2, "filter": 2}, "pairs_stored": 4,
                    "problems": 0, "lost": 0, "found_rate": 1.0,
                    "recall@10": {"i2t": 0.2286, "t2i": 0.1952}},
    }


def test_report_files_written(tmp_path, images):
    out = tmp_path / "reports"
    index = write_report(fake_history(images), out)
    assert index == out / "index.html"
    for name in ("index.html", "learning_curve.png", "medoids.png", "history.json"):
        assert (out / name).stat().st_size > 0, name
    for png in ("learning_curve.png", "medoids.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.size[0] > 300
    html = index.read_text()
    assert "<title>test demo</title>" in html
    assert 'src="learning_curve.png"' in html
    # thumbnails are embedded: 4 medoids + 4 text->image results + 1 query image
    assert len(re.findall(r'src="data:image/jpeg;base64,', html)) == 9
    # captions are escaped, the ground truth is marked, NaN shows as a dash
    assert "caption &lt;0&gt; &amp; more" in html and "<0>" not in html
    assert 'class="res hit"' in html and 'class="hit"' in html
    assert "–" in html
    assert "Recall@10" in html and "a note" in html
    # the annotator's line reads as words, not a Python dict
    assert "image→text 0.229, text→image 0.195" in html and "{" not in html.split("Annotator:")[1][:400]
    # no absolute file paths leak into img tags: the folder can be moved
    assert not re.search(r'<img src="/', html)
    assert load_history(out / "history.json")["curve"][0]["labels"] == 2


def test_report_without_optional_parts(tmp_path):
    index = write_report({"curve": []}, tmp_path / "r")
    html = index.read_text()
    assert "No quality measurements" in html
    assert not (tmp_path / "r" / "learning_curve.png").exists()
    assert not (tmp_path / "r" / "medoids.png").exists()


def test_missing_image_files_do_not_break_the_report(tmp_path):
    history = {"curve": [{"labels": 1, "methods": {"ssm-al": {"recall@10_i2t": 0.2}}}],
               "medoids": [{"rank": 1, "image_id": "gone.png", "image_path": str(tmp_path / "gone.png"),
                            "text": "x"}]}
    html = write_report(history, tmp_path / "r").read_text()
    assert 'class="missing"' in html


def test_metric_names_order():
    curve = [{"labels": 1, "methods": {"a": {"map_i2t": 1, "recall@5_t2i": 1, "recall@10_i2t": 1,
                                              "junk": 1}}}]
    assert metric_names(curve) == ["recall@5", "recall@10", "map"]


def test_thumbnail_uri(tmp_path, images):
    assert thumbnail_uri(images[0]).startswith("data:image/jpeg;base64,")
    assert thumbnail_uri(tmp_path / "nope.png") is None


def test_bad_history(tmp_path, images):
    with pytest.raises(DataError):
        write_report([], tmp_path)
    (tmp_path / "h.json").write_text("{not json")
    with pytest.raises(DataError):
        load_history(tmp_path / "h.json")
    json.dumps(fake_history(images))  # the format is plain JSON


def wide_history(images):
    """A history shaped like the demo's: label 1 has no scores yet, every method and metric after."""
    history = fake_history(images)
    history["curve"].insert(0, {"labels": 1, "index_version": 2, "elapsed_s": 0.4, "methods": {}})
    for p in history["curve"]:
        p["labels"] = p["labels"] * 10  # two- and three-digit label counts
    history["examples"]["text_to_image"][0].update(truth=["nothing-shown"], truth_rank=37, ranked_of=300)
    history["examples"]["image_to_text"][0].update(truth_rank=2, ranked_of=300)
    history["dataset"]["class labels (for MAP)"] = "yes"
    history["settings"]["labels to annotate"] = 30
    return history


def test_curve_table_is_compact_and_explains_the_first_row(tmp_path, images):
    html = write_report(wide_history(images), tmp_path / "r").read_text()
    table = html[html.index('<table class="curve">'):]
    table = table[:table.index("</table>")]
    assert 'colspan="3">Recall@10<br>image→text' in table
    assert "<th>SSM-AL</th><th>random</th><th>CCA</th>" in table
    first_row = table.split("<tr>")[3]
    assert "not measured yet" in first_row and "–" not in first_row  # row 1 is not all dashes
    assert "– = not measured" in html  # the legend for the remaining dashes


def test_examples_say_where_the_true_match_ranks(tmp_path, images):
    html = write_report(wide_history(images), tmp_path / "r").read_text()
    assert "true image: rank 37 of 300, not among the 4 shown" in html
    assert "true text: rank 2 of 300 (green)" in html
    assert "1 of 2 queries have it there" in html
    assert "Green = the ground-truth match.</p>" not in html


def test_medoid_captions_wrap_to_the_cell():
    from PIL import Image, ImageDraw, ImageFont

    from xmodal.demo.figures import _sheet_font, _wrap

    font = _sheet_font(ImageFont, 11)
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    fits = lambda line: draw.textlength(line, font=font) <= 138  # noqa: E731
    text = "#12: A grass green rhombus, medium, at the bottom right of a supercalifragilisticexpialidocious"
    lines = _wrap(text, fits, 6).split("\n")
    assert all(fits(line) for line in lines), lines
    assert lines[0].startswith("#12: A grass")
    assert _wrap("one two three", 7) == "one two\nthree"


def test_report_tables_fit_the_page_at_1280px_in_chromium(tmp_path, images):
    """Headless Debian Chromium (selenium) renders the report; a table wider than the page fails."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "check_report", Path(__file__).resolve().parents[1] / "scripts" / "check_report.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    binary, driver = check.chromium_paths()
    if not binary or not driver:
        pytest.skip("Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver; "
                    "`make test` installs them when it can): the report's width check did not run")
    pytest.importorskip("selenium", reason="selenium is not installed: the report's width check did not run")
    history = wide_history(images)
    # many methods' worth of columns, as the demo writes with MAP and Recall@10
    index = write_report(history, tmp_path / "r")
    result = check.measure(index, width=1280, screenshot=tmp_path / "shot.png")
    assert len(result["tables"]) >= 3
    assert check.too_wide(result) == [], check.too_wide(result)
    assert (tmp_path / "shot.png").stat().st_size > 0
    # and the check does catch a table that is too wide
    html = index.read_text().replace("</body>", "<table><tr>" + "<td>0.123456789</td>" * 60
                                     + "</tr></table></body>")
    index.write_text(html)
    assert any("table" in line for line in check.too_wide(check.measure(index, width=1280)))
