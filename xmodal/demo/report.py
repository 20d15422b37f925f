"""The demo report: ``index.html`` + PNGs from a recorded session history.

The history is a plain dict (the demo writes it as ``history.json`` next to the report)::

    {
      "title": "xmodal demo",                       # optional
      "dataset": {"name", "source", "n_images", "n_texts", "labelled_by": "shape"},
      "settings": {"select": "image", "encoders": {"image": ..., "text": ...}, ...},
      "timings": {"total_s": ..., "bootstrap_s": ..., ...},          # optional, shown as is
      "curve": [                                    # one point per label count
        {"labels": 3, "index_version": 4, "elapsed_s": 12.5,
         "methods": {"ssm-al": {"recall@10_i2t": .., "recall@10_t2i": .., "map_i2t": .., "map_t2i": ..},
                     "random": {...}, "cca": {...}}},
        ...
      ],
      "medoids": [                                  # in annotation (anytime) order
        {"rank": 1, "image_id": ..., "image_path": ..., "text_id": ..., "text": ...}, ...
      ],
      "examples": {
        "text_to_image": [{"query": text, "query_id": .., "truth": [image ids],
                           "results": [{"id", "path", "score"}, ...]}, ...],
        "image_to_text": [{"query": image id, "query_path": .., "truth": [text ids],
                           "results": [{"id", "text", "score"}, ...]}, ...]
      },
      "notes": ["free text lines", ...]            # optional
    }

Every key is optional except ``curve`` (the report says what is missing rather than failing).
Metric names: ``recall@K_i2t`` / ``recall@K_t2i`` / ``map_i2t`` / ``map_t2i``; any other
``<name>_i2t`` / ``<name>_t2i`` pair is plotted the same way.

The HTML is self-contained apart from the PNGs written next to it (relative paths); thumbnails
are embedded as base64 data URIs, so the folder can be zipped or opened from anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
from pathlib import Path

from xmodal.demo.figures import DIRECTIONS, METHOD_STYLE, curve_methods, plot_learning_curve, plot_medoids
from xmodal.errors import DataError

THUMB = 96


# -- helpers ----------------------------------------------------------------------------------

def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def thumbnail_uri(path, size: int = THUMB) -> str | None:
    """A small JPEG of an image file as a ``data:`` URI (None when the file cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img_tag(path, alt: str = "", size: int = THUMB, cls: str = "") -> str:
    uri = thumbnail_uri(path, size) if path else None
    if uri is None:
        return f'<div class="missing" style="width:{size}px;height:{size}px">{_esc(alt) or "no image"}</div>'
    return f'<img src="{uri}" alt="{_esc(alt)}" title="{_esc(alt)}" class="{cls}" loading="lazy">'


# -- HTML -------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
     max-width:1100px;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f6f6f6}
td.l,th.l{text-align:left} table.curve{font-size:.8em} table.curve td,table.curve th{padding:.2em .4em}
td.none{color:#888;text-align:center;font-style:italic} th[colspan]{text-align:center}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:160px;font-size:.8em;border:1px solid #eee;padding:4px;border-radius:4px}
.card img,.card .missing{display:block;margin:0 auto 4px auto}
.missing{background:#eee;color:#888;font-size:.7em;display:flex;align-items:center;justify-content:center}
.query{margin:1em 0;padding:.6em;border:1px solid #eee;border-radius:4px}
.results{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
.res{width:100px;font-size:.7em;text-align:center} .res img,.res .missing{display:block;margin:0 auto 2px auto}
.hit img,.hit .missing{outline:3px solid #2ca02c} li.hit{color:#1a7f1a;font-weight:600}
ol{margin:.3em 0 0 0;font-size:.85em} .score{color:#888;font-size:.85em}
code{background:#f3f3f3;padding:0 .2em}
"""


SHORT = {"ssm-al": "SSM-AL", "random": "random", "cca": "CCA"}


def _metric_title(metric: str) -> str:
    return metric.replace("recall@", "Recall@").replace("map", "MAP")


def _directions(values) -> str:
    """``{"i2t": .2286, "t2i": .1952}`` as a person reads it: "image→text .229, text→image .195"."""
    if not isinstance(values, dict):
        return "not measured" if values is None else str(values)
    names = {"i2t": "image→text", "t2i": "text→image"}
    return ", ".join(f"{names.get(k, k)} {v:.3f}" if isinstance(v, (int, float)) else f"{names.get(k, k)} {v}"
                     for k, v in values.items())


def _curve_table(curve: list[dict], metrics: list[str]) -> str:
    """One row per label count; a header group per metric and direction, short method names under
    it (the long ones are in the figure's legend), so that it fits a 1280 px page."""
    methods = curve_methods(curve)
    groups = [(metric, d) for metric in metrics for d in DIRECTIONS]
    cols = [(m, f"{metric}_{d}") for metric, d in groups for m in methods]
    top = "".join(f'<th colspan="{len(methods)}">{_esc(_metric_title(metric))}<br>{_esc(DIRECTIONS[d])}</th>'
                  for metric, d in groups)
    sub = "".join(f"<th>{_esc(SHORT.get(m, m))}</th>" for _ in groups for m in methods)
    rows = []
    for p in curve:
        values = [((p.get("methods") or {}).get(m) or {}).get(k) for m, k in cols]
        extra = f"<td>{_fmt(p.get('index_version'))}</td><td>{_fmt(p.get('elapsed_s'), 1)}</td>"
        if all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            n = p.get("labels")
            cells = (f'<td class="none" colspan="{len(cols)}">not measured yet: with {_esc(n)} '
                     f'pair{"" if n == 1 else "s"} the index cannot rank (SSR needs 2 references)</td>')
        else:
            cells = "".join(f"<td>{_fmt(v)}</td>" for v in values)
        rows.append(f"<tr><td>{_esc(p.get('labels'))}</td>{cells}{extra}</tr>")
    return ('<table class="curve">'
            f'<tr><th rowspan="2">labels</th>{top}<th rowspan="2">index<br>version</th>'
            f'<th rowspan="2">elapsed<br>s</th></tr><tr>{sub}</tr>'
            + "".join(rows) + "</table>"
            + '<p class="sub">SSM-AL = k-medoid references, random = random references, CCA = CCA on '
              'the same pairs; – = not measured for that method.</p>')


def _summary(curve: list[dict], metrics: list[str]) -> str:
    if not curve or not metrics:
        return ""
    last = curve[-1]
    metric = metrics[0]
    parts = []
    for m in curve_methods(curve):
        vals = [((last.get("methods") or {}).get(m) or {}).get(f"{metric}_{d}") for d in DIRECTIONS]
        vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if vals:
            label = METHOD_STYLE.get(m, (m,))[0]
            parts.append(f"<b>{_esc(label)}</b>: {sum(vals) / len(vals):.3f}")
    if not parts:
        return ""
    name = metric.replace("recall@", "Recall@").replace("map", "MAP")
    return (f"<p>After <b>{_esc(last.get('labels'))}</b> labels, mean {name} over both directions — "
            + "; ".join(parts) + ".</p>")


def _medoid_cards(medoids: list[dict]) -> str:
    cards = []
    for m in medoids:
        alt = m.get("image_id", "")
        caption = m.get("text") or "(no match)"
        how = {"shown": "picked among the texts shown first", "filter": "found with the filter",
               "search": "found by the search over all texts", "written": "described by the annotator",
               "pasted": "pasted id (oracle)", "skipped": "skipped"}.get(m.get("how"))
        where = "" if how is None else f'<br><span class="score">{_esc(how)}' + (
            "" if m.get("found", True) else " — not a match") + "</span>"
        cards.append(f'<div class="card">{_img_tag(m.get("image_path"), alt)}'
                     f'<b>#{_esc(m.get("rank", "?"))}</b> {_esc(caption)}{where}</div>')
    return f'<div class="grid">{"".join(cards)}</div>'


def _examples_html(examples: dict) -> str:
    out = []
    t2i = examples.get("text_to_image") or []
    if t2i:
        out.append("<h3>Text → images</h3>")
        for ex in t2i:
            truth = set(map(str, ex.get("truth") or []))
            res = []
            for i, r in enumerate(ex.get("results") or [], 1):
                hit = str(r.get("id")) in truth
                res.append(f'<div class="res{" hit" if hit else ""}">'
                           f'{_img_tag(r.get("path"), str(r.get("id")), 88)}'
                           f'{i}. <span class="score">{_fmt(r.get("score"))}</span></div>')
            out.append(f'<div class="query"><b>“{_esc(ex.get("query"))}”</b>'
                       f'{_truth_line(ex, "image")}<div class="results">{"".join(res)}</div></div>')
    i2t = examples.get("image_to_text") or []
    if i2t:
        out.append("<h3>Image → texts</h3>")
        for ex in i2t:
            truth = set(map(str, ex.get("truth") or []))
            items = "".join(
                f'<li class="{"hit" if str(r.get("id")) in truth else ""}">{_esc(r.get("text", r.get("id")))} '
                f'<span class="score">{_fmt(r.get("score"))}</span></li>'
                for r in ex.get("results") or [])
            out.append(f'<div class="query" style="display:flex;gap:1em">'
                       f'<div>{_img_tag(ex.get("query_path"), str(ex.get("query")), 120)}</div>'
                       f'<div>{_truth_line(ex, "text")}<ol>{items}</ol></div></div>')
    if out:
        queries = t2i + i2t
        shown = sum(1 for ex in queries if _top_hit(ex))
        out.insert(0, f'<p class="sub">The top {max((len(ex.get("results") or []) for ex in queries), default=5)} '
                      f'results of each query. A result outlined in green is the ground-truth match; '
                      f'{shown} of {len(queries)} queries have it there, and under each query is where it ranks.</p>')
    return "".join(out)


def _top_hit(ex: dict) -> bool:
    truth = set(map(str, ex.get("truth") or []))
    return any(str(r.get("id")) in truth for r in ex.get("results") or [])


def _truth_line(ex: dict, kind: str) -> str:
    """Where the ground-truth match ranks: in the shown results (green), further down, or unknown."""
    rank, of = ex.get("truth_rank"), ex.get("ranked_of")
    n_shown = len(ex.get("results") or [])
    if rank is None and _top_hit(ex):
        return '<div class="score">the true match is among these (green)</div>'
    if rank is None:
        where = (f"not in the first {of}" if of else "not recorded") if "truth_rank" in ex else "not recorded"
        return f'<div class="score">true {kind}: {_esc(where)}</div>'
    of_txt = f" of {of}" if of else ""
    if rank <= n_shown:
        return f'<div class="score">true {kind}: rank {rank}{of_txt} (green)</div>'
    return f'<div class="score">true {kind}: rank {rank}{of_txt}, not among the {n_shown} shown</div>'



def _kv_table(d: dict) -> str:
    rows = "".join(f'<tr><th class="l">{_esc(k)}</th>'
                   f'<td class="l">{_esc(_fmt(v, 2) if isinstance(v, float) else v)}</td></tr>'
                   for k, v in d.items() if not isinstance(v, (dict, list)))
    nested = "".join(f'<tr><th class="l">{_esc(k)}</th>'
                     f'<td class="l">{_esc(json.dumps(v, ensure_ascii=False))}</td></tr>'
                     for k, v in d.items() if isinstance(v, (dict, list)))
    return f"<table>{rows}{nested}</table>" if rows or nested else ""


def write_report(history: dict, out_dir: str | os.PathLike) -> Path:
    """Write ``index.html``, ``learning_curve.png``, ``medoids.png`` and ``history.json`` into
    ``out_dir``; return the path of ``index.html``."""
    if not isinstance(history, dict):
        raise DataError("the report needs a history dict")
    curve = sorted(history.get("curve") or [], key=lambda p: p.get("labels", 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    metrics = plot_learning_curve(curve, out / "learning_curve.png", history.get("chance"))
    if not metrics:
        (out / "learning_curve.png").unlink(missing_ok=True)
    medoids = history.get("medoids") or []
    has_sheet = plot_medoids(medoids, out / "medoids.png")
    if not has_sheet:
        (out / "medoids.png").unlink(missing_ok=True)
    (out / "history.json").write_text(json.dumps(history, indent=1, ensure_ascii=False, default=str),
                                      encoding="utf-8")

    ds = history.get("dataset") or {}
    title = history.get("title") or "xmodal demo"
    sub = ", ".join(str(x) for x in (
        ds.get("name"), f"{ds['n_images']} images" if ds.get("n_images") is not None else None,
        f"{ds['n_texts']} texts" if ds.get("n_texts") is not None else None) if x)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'>"
             f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_esc(title)}</h1>",
             f'<p class="sub">{_esc(sub)} — generated {_esc(time.strftime("%Y-%m-%d %H:%M:%S"))}</p>']
    parts.append("<h2>Learning curve</h2>")
    if metrics:
        parts.append(_summary(curve, metrics))
        parts.append('<p><img src="learning_curve.png" alt="learning curve" style="max-width:100%"></p>')
        parts.append('<p class="sub">SSM-AL: the references are the k-medoids in anytime order, '
                     'annotated one by one; its points are measured on the index the worker '
                     'published. Random references: the same number of pairs drawn at random '
                     '(mean of several draws). CCA: fitted on the same pairs as SSM-AL.</p>')
        parts.append(_curve_table(curve, metrics))
        session = history.get("session") or {}
        if session:
            how = ", ".join(f"{n} {k}" for k, n in (session.get("how") or {}).items() if n)
            parts.append(f'<p>Annotator: <b>{_esc(session.get("annotator"))}</b> ({_esc(how)}); '
                         f'{_esc(session.get("pairs_stored"))} pairs stored, {_esc(session.get("problems"))} '
                         f'problems, {_esc(session.get("lost"))} lost; right pairs '
                         f'{_esc(session.get("found_rate"))}; Recall@10 over the items that are not '
                         f'references: {_esc(_directions(session.get("recall@10")))}.</p>')
    else:
        parts.append("<p>No quality measurements were recorded.</p>")
    if medoids:
        parts.append(f"<h2>The {len(medoids)} medoids, in the order they were labelled</h2>")
        parts.append('<p class="sub">Each is a real item the annotator was asked about; the text is '
                     'the match they picked.</p>')
        parts.append(_medoid_cards(medoids))
        if has_sheet:
            parts.append('<p class="sub">Also as one image: <a href="medoids.png">medoids.png</a>.</p>')
    examples = history.get("examples") or {}
    ex_html = _examples_html(examples)
    if ex_html:
        parts.append("<h2>Example queries with the final index</h2>")
        parts.append(ex_html)
    settings = dict(history.get("settings") or {})
    if ds or settings or history.get("timings"):
        parts.append("<h2>Session</h2>")
        for caption, d in (("Data", ds), ("Settings", settings), ("Timings (s)", history.get("timings") or {})):
            if d:
                parts.append(f"<h3>{caption}</h3>{_kv_table(d)}")
    for note in history.get("notes") or []:
        parts.append(f"<p>{_esc(note)}</p>")
    parts.append('<p class="sub">Raw numbers: <a href="history.json">history.json</a>.</p></body></html>')
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    os.replace(tmp, index)
    return index


def load_history(path: str | os.PathLike) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the session history {path}: {exc}") from exc
