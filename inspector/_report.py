"""The files of a batch review report: ``index.html`` (self-contained), ``results.csv``, ``defects.csv``.

Rendered from the review's journal records (plain dicts, see `inspector.review`), so the same code
writes the periodic reports during a run and the final one. Every file is written atomically
(``models.files.atomic_open_text``: a temporary file in the same folder, then ``os.replace``): a reader
never sees half a report.

The page opens from disk with no server and no network: inline CSS and JavaScript, an inline SVG
score histogram, thumbnails and overlays referenced by relative paths. Every text that comes from
outside (file names, error messages, recipe names) is HTML-escaped. A review of more than
``PAGE_ROWS`` images puts every image's row on pages of that many (``pages/images-0001.html``, ...,
`write_pages`) and the index lists the flagged and unreadable ones with links to the pages: one page
of 200,000 rows was 77 MB, more than a browser opens comfortably.
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import quote

import cv2
import numpy as np

from inspector._csv import csv_cell
from inspector.overlay import location_heat_image
from models.files import atomic_open_text, atomic_write

__all__ = ["Records", "ReportMeta", "write_report"]

# The report's records: a sequence, or a function giving them afresh in report order on each call (the
# report reads them a few times over and never holds them all: a review of a million images).
Records = Sequence[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]]

HISTOGRAM_BINS: Final = 30
PAGE_ROWS: Final = 1000             # image rows per page: above this the table is split into pages/ (a browser
                                    # stays quick with a thousand thumbnails; a 200,000-row page is 77 MB)
PAGES_DIR: Final = "pages"
VERDICT_ORDER: Final = ("FAIL", "REVIEW", "PASS", "ERROR")
VERDICT_COLOURS: Final = {"PASS": "#2e7d32", "REVIEW": "#ef6c00", "FAIL": "#c62828", "ERROR": "#616161"}
RESULT_COLUMNS: Final = ("file", "verdict", "score", "defects", "largest_defect_px", "largest_defect_mm2",
                         "width", "height", "thumbnail", "overlay", "error")
LOCATION_COLUMNS: Final = 12        # cells across the frame in the location maps (rows follow the aspect)
LOCATION_TYPES: Final = 4           # one map per defect type for the most frequent types, beside the map of all
UNTYPED: Final = "untyped"
DEFECT_COLUMNS: Final = ("file", "region", "x", "y", "width", "height", "area_px", "area_mm2", "max_score",
                         "mean_score", "defect_class", "predicted_class", "type_confidence")


@dataclass(frozen=True, kw_only=True)
class ReportMeta:
    """What the report says about the run as a whole."""

    title: str                       # e.g. "Review of parts_0612"
    mode: str                        # "recipe" or "zero-shot"
    source: str                      # the reviewed folder, as given
    model: str                       # "recipe bracket_a, model v3" or "zero-shot (DINOv2 ...)"
    thresholds: tuple[float, float, float] | None  # (review, fail, pixel); None before they are known
    rule: str                        # one sentence: how verdicts were decided
    total_files: int                 # image files found in the folder
    complete: bool                   # False for a periodic report written mid-run
    generated: str                   # local time the report was written
    images_per_second: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _largest(record: Mapping[str, Any]) -> tuple[int | None, float | None]:
    regions = record.get("regions") or []
    if not regions:
        return None, None
    biggest = max(regions, key=lambda r: r["area_px"])
    return int(biggest["area_px"]), biggest.get("area_mm2")


def write_report(out: Path, records: Records, meta: ReportMeta) -> Path:
    """Write ``index.html``, ``results.csv`` and ``defects.csv`` into ``out``.

    Args:
        out: the report folder (exists; thumbnails and overlays are already in it).
        records: one journal record per image, in report order: ``file`` (relative POSIX path),
            ``status`` ("ok" or "error"), and for "ok" ``verdict``, ``score``, ``regions`` (dicts
            with x, y, width, height, area_px, area_mm2, max_score, mean_score, defect_class),
            ``width``, ``height``, ``thumb`` and ``overlay`` (paths relative to ``out`` or None);
            for "error" ``error`` (the reason). A sequence, or a function that gives them afresh on each
            call: the files are streamed, so the report's memory does not grow with the number of images.
        meta: what the report says about the run.

    Returns:
        The path of ``index.html``.
    """
    again = _replayable(records)
    with atomic_open_text(out / "results.csv") as fh:
        total = _write_csv(fh, RESULT_COLUMNS, (_result_row(r) for r in again()))   # one row per image
    with atomic_open_text(out / "defects.csv") as fh:
        _write_csv(fh, DEFECT_COLUMNS, (row for r in again() for row in _defect_rows(r)))
    locations = write_location_maps(out, again)
    pages = write_pages(out, again, meta, total=total)
    index = out / "index.html"
    with atomic_open_text(index) as fh:
        write_html(fh, again, meta, locations, pages=pages)
    return index


def write_pages(out: Path, records: Callable[[], Iterable[Mapping[str, Any]]], meta: ReportMeta,
                rows: int | None = None, *, total: int | None = None) -> int:
    """Above ``rows`` images, every image's row on pages of ``rows`` (``pages/images-0001.html``, ...);
    returns how many pages there are (0: the index holds every row). Pages left by an earlier, longer
    report are removed. ``total``: the number of records when known (else they are counted: one more
    pass over a journal that may hold hundreds of thousands)."""
    rows = rows or PAGE_ROWS
    folder = out / PAGES_DIR
    count = 0
    chunk: list[Mapping[str, Any]] = []
    if total is None:
        total = sum(1 for _ in records())
    if total > rows:
        n_pages = math.ceil(total / rows)
        folder.mkdir(exist_ok=True)
        for r in records():
            chunk.append(r)
            if len(chunk) == rows:
                count += 1
                _write_page(folder, chunk, meta, count, n_pages)
                chunk = []
        if chunk:
            count += 1
            _write_page(folder, chunk, meta, count, n_pages)
    if folder.is_dir():
        for stale in folder.glob("images-*.html"):
            number = stale.stem.removeprefix("images-")
            if not number.isdigit() or int(number) > count:
                stale.unlink(missing_ok=True)
    return count


def _page_name(number: int) -> str:
    return f"images-{number:04d}.html"


def _write_page(folder: Path, chunk: Sequence[Mapping[str, Any]], meta: ReportMeta, number: int,
                n_pages: int) -> None:
    links = ['<a href="../index.html">report</a>']
    if number > 1:
        links.append(f'<a href="{_page_name(number - 1)}">previous page</a>')
    if number < n_pages:
        links.append(f'<a href="{_page_name(number + 1)}">next page</a>')
    nav = f'<p class="nav">Page {number} of {n_pages} &middot; ' + " &middot; ".join(links) + "</p>"
    with atomic_open_text(folder / _page_name(number)) as fh:
        fh.write("\n".join((
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(meta.title)}: images, page {number}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(meta.title)}: images, page {number} of {n_pages}</h1>", nav)))
        _write_table(fh, chunk, prefix="../")
        fh.write("\n" + nav + f"\n<script>{_JS}</script></body></html>")


@dataclass(frozen=True, kw_only=True)
class LocationMaps:
    """The location maps a report shows: where on the frame the defect regions of a review sit."""

    reference: str                        # the file whose thumbnail is the background
    reference_is_good: bool               # False: no PASS image yet, a flagged one stands in
    grid: tuple[int, int]                 # (rows, cols) over the frame
    maps: tuple[tuple[str, str, int], ...]  # (defect type or "all types", image path relative to out, regions)


def _region_type(region: Mapping[str, Any]) -> str:
    # a reviewer's class where given, else the few-shot typer's guess (inspector.defect_typing)
    return str(region.get("defect_class") or region.get("predicted_class") or UNTYPED)


def location_counts(records: Iterable[Mapping[str, Any]], grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Region centres per defect type, counted on a ``grid`` (rows, cols) over each image's frame.

    Centres are scaled by each image's own width and height, so images of different sizes share the map.
    """
    rows_n, cols_n = grid
    counts: dict[str, np.ndarray] = {}
    for r in records:
        width, height = r.get("width"), r.get("height")
        if r.get("status") != "ok" or not width or not height:
            continue
        for reg in r.get("regions") or []:
            col = int((reg["x"] + reg["width"] / 2) / width * cols_n)
            row = int((reg["y"] + reg["height"] / 2) / height * rows_n)
            if 0 <= row < rows_n and 0 <= col < cols_n:
                counts.setdefault(_region_type(reg), np.zeros(grid, np.int64))[row, col] += 1
    return counts


def _reference(records: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, bool]:
    """The lowest-scoring PASS record with a thumbnail (True), else the first record with one (False).

    The lowest-scoring, not the first: in a zero-shot review a PASS can be a missed defect, and the image
    least like a defect is the likeliest good one (``good_candidates`` teaches from the same end).
    """
    first, best, best_score = None, None, math.inf
    for r in records:
        if r.get("status") == "ok" and r.get("thumb") and r.get("width"):
            first = first or r
            score = r.get("score")
            if r.get("verdict") == "PASS" and score is not None and math.isfinite(score) and score < best_score:
                best, best_score = r, float(score)
    return (best, True) if best is not None else (first, False)


def write_location_maps(out: Path, records: Records) -> LocationMaps | None:
    """Heat images of where the regions sit, over the thumbnail of the lowest-scoring PASS image (``locations/``).

    Two passes over the records (the reference, the counts), holding none. None when there are no regions
    yet or no thumbnail to draw on.
    """
    again = _replayable(records)
    base, is_good = _reference(again())
    if base is None:
        return None
    reference = cv2.imread(str(out / base["thumb"]), cv2.IMREAD_COLOR)
    if reference is None:
        return None
    th, tw = reference.shape[:2]
    grid = (max(1, round(LOCATION_COLUMNS * th / tw)), LOCATION_COLUMNS)
    counts = location_counts(again(), grid)
    if not counts:
        return None
    (out / "locations").mkdir(exist_ok=True)
    ranked = sorted(counts.items(), key=lambda kv: (-int(kv[1].sum()), kv[0]))
    every: np.ndarray = np.sum(list(counts.values()), axis=0)
    chosen = [("all types", every), *ranked[:LOCATION_TYPES]] if len(counts) > 1 else ranked
    background = cv2.resize(reference, (tw * 2, th * 2))    # twice the thumbnail, so the map reads beside them
    maps = []
    for i, (name, cells) in enumerate(chosen):
        ok, png = cv2.imencode(".png", location_heat_image(background, cells))
        if not ok:
            continue
        rel = f"locations/map-{i}.png"
        atomic_write(out / rel, png.tobytes(), fsync=False)
        maps.append((name, rel, int(cells.sum())))
    return LocationMaps(reference=str(base["file"]), reference_is_good=is_good, grid=grid, maps=tuple(maps))


def _replayable(records: Records) -> Callable[[], Iterable[Mapping[str, Any]]]:
    if callable(records):
        return records
    return lambda: records


def _write_csv(fh: TextIO, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """CSV rows; a text cell that a spreadsheet would run as a formula (a file named ``=cmd|...``) gets a ``'``.
    Returns the number of rows written (the header not counted)."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    count = 0
    for row in rows:
        writer.writerow([csv_cell(c) for c in row])
        count += 1
    return count


def _result_row(r: Mapping[str, Any]) -> list[Any]:
    area_px, area_mm2 = _largest(r)
    ok = r.get("status") == "ok"
    return [
        r["file"], r.get("verdict") if ok else "ERROR", _fmt(r.get("score"), 6) if ok else "",
        len(r.get("regions") or []) if ok else "", area_px or "", _fmt(area_mm2, 3),
        r.get("width") or "", r.get("height") or "", r.get("thumb") or "", r.get("overlay") or "",
        r.get("error") or "",
    ]


def _defect_rows(r: Mapping[str, Any]) -> Iterable[list[Any]]:
    for i, reg in enumerate(r.get("regions") or [], 1):
        yield [r["file"], i, reg["x"], reg["y"], reg["width"], reg["height"], reg["area_px"],
               _fmt(reg.get("area_mm2"), 3), _fmt(reg.get("max_score"), 6),
               _fmt(reg.get("mean_score"), 6), reg.get("defect_class") or "",
               reg.get("predicted_class") or "", _fmt(reg.get("type_confidence"), 3)]


# ------------------------------------------------------------------------------------------- HTML


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _href(relative: str) -> str:
    """A relative path inside the report folder as an escaped URL (names are made safe by the review)."""
    return _e(quote(relative, safe="/"))


def histogram_svg(scores: Sequence[float], thresholds: tuple[float, float, float] | None, *,
                  width: int = 640, height: int = 180, bins: int = HISTOGRAM_BINS) -> str:
    """An inline SVG histogram of the image scores with the review and fail thresholds as lines.

    Args:
        scores: image scores (ERROR images have none and are left out).
        thresholds: (review, fail, pixel) or None.
        width: SVG width in px.
        height: SVG height in px.
        bins: number of bars.

    Returns:
        ``<svg ...>...</svg>`` markup.
    """
    finite = [float(s) for s in scores if s is not None and math.isfinite(s)]
    if not finite:
        return _histogram_markup(None, 0.0, 0.0, thresholds, width=width, height=height)
    lo, hi = _histogram_range(min(finite), max(finite), thresholds)
    return _histogram_markup(_bin_counts(finite, lo, hi, bins), lo, hi, thresholds, width=width, height=height)


def _histogram_range(low: float, high: float, thresholds: tuple[float, float, float] | None) -> tuple[float, float]:
    """The histogram's axis: the scores' range and the review/fail thresholds, with a 2 % margin."""
    marks = [t for t in (thresholds or ())[:2] if math.isfinite(t)]
    lo = min([low, *marks])
    hi = max([high, *marks])
    if hi <= lo:
        hi = lo + 1e-6
    span = hi - lo
    return lo - 0.02 * span, hi + 0.02 * span


def _bin_counts(scores: Iterable[float], lo: float, hi: float, bins: int) -> list[int]:
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, int((s - lo) / (hi - lo) * bins))] += 1
    return counts


def _histogram_markup(counts: list[int] | None, lo: float, hi: float,
                      thresholds: tuple[float, float, float] | None, *, width: int = 640, height: int = 180) -> str:
    pad_l, pad_b, pad_t = 40, 28, 10
    plot_w, plot_h = width - pad_l - 10, height - pad_b - pad_t
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="histogram of image scores">']
    if counts is None:
        parts.append(f'<text x="{pad_l}" y="{height // 2}">no scores yet</text></svg>')
        return "".join(parts)
    bins = len(counts)
    top = max(counts)

    def x_of(v: float) -> float:
        return pad_l + (v - lo) / (hi - lo) * plot_w

    bar_w = plot_w / bins
    for i, c in enumerate(counts):
        if c:
            h = c / top * plot_h
            parts.append(f'<rect x="{pad_l + i * bar_w:.1f}" y="{pad_t + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                         f'height="{h:.1f}" fill="#5c6bc0"><title>{c} image(s), score '
                         f'{lo + i * (hi - lo) / bins:.4f} to {lo + (i + 1) * (hi - lo) / bins:.4f}</title></rect>')
    parts.append(f'<line x1="{pad_l}" y1="{pad_t + plot_h}" x2="{pad_l + plot_w}" y2="{pad_t + plot_h}" stroke="#333"/>')
    parts.append(f'<text x="{pad_l}" y="{height - 8}" font-size="11">{lo:.4f}</text>')
    parts.append(f'<text x="{pad_l + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">{hi:.4f}</text>')
    parts.append(f'<text x="4" y="{pad_t + 10}" font-size="11">{top}</text>')
    if thresholds is not None:
        for name, value, colour in (("review", thresholds[0], VERDICT_COLOURS["REVIEW"]),
                                    ("fail", thresholds[1], VERDICT_COLOURS["FAIL"])):
            if math.isfinite(value):
                x = x_of(value)
                parts.append(f'<line x1="{x:.1f}" y1="{pad_t}" x2="{x:.1f}" y2="{pad_t + plot_h}" stroke="{colour}" '
                             f'stroke-width="2" stroke-dasharray="4 3"><title>{name} threshold {value:.4f}</title></line>')
                right = x > pad_l + 0.75 * plot_w      # label left of the line near the right edge
                parts.append(f'<text x="{x - 3 if right else x + 3:.1f}" y="{pad_t + (12 if name == "fail" else 24)}" '
                             f'font-size="11" fill="{colour}" text-anchor="{"end" if right else "start"}">'
                             f'{name} {value:.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
.meta td{padding:1px 12px 1px 0;vertical-align:top}.warn{background:#fff3e0;padding:.4em .8em;border-left:4px solid #ef6c00}
.counts span{display:inline-block;margin-right:1.2em}
table.results{border-collapse:collapse;width:100%}
table.results th,table.results td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
table.results th{cursor:pointer;user-select:none;background:#f5f5f5;position:sticky;top:0}
table.results th.sorted-asc::after{content:" \\25B2"}table.results th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.v{font-weight:600;padding:1px 6px;border-radius:3px;color:#fff}
.v-PASS{background:#2e7d32}.v-REVIEW{background:#ef6c00}.v-FAIL{background:#c62828}.v-ERROR{background:#616161}
img.thumb{max-width:160px;max-height:120px;display:block}
.locations figure{display:inline-block;margin:0 1em 1em 0}.locations img{max-width:340px;display:block}
.filters{margin:.6em 0}.filters label{margin-right:1em}
"""

_JS: Final = """
(function(){
  var table=document.getElementById('results');var body=table.tBodies[0];
  var rows=Array.prototype.slice.call(body.rows);
  function key(row,col){var c=row.cells[col];var v=c.getAttribute('data-v');
    if(v===null){return c.textContent.toLowerCase();}var n=parseFloat(v);return isNaN(n)?-Infinity:n;}
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,col){
    if(th.hasAttribute('data-nosort')){return;}
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('sorted-asc');
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc?'sorted-asc':'sorted-desc');
      rows.sort(function(a,b){var x=key(a,col),y=key(b,col);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
  var text=document.getElementById('f-text');var minScore=document.getElementById('f-score');
  var boxes=document.querySelectorAll('input.f-verdict');var shown=document.getElementById('shown');
  function apply(){
    var t=text.value.toLowerCase();var m=parseFloat(minScore.value);var on={};var n=0;
    Array.prototype.forEach.call(boxes,function(b){on[b.value]=b.checked;});
    rows.forEach(function(r){
      var ok=on[r.getAttribute('data-verdict')]&&r.getAttribute('data-file').toLowerCase().indexOf(t)>=0;
      if(ok&&!isNaN(m)){var s=parseFloat(r.getAttribute('data-score'));ok=!isNaN(s)&&s>=m;}
      r.style.display=ok?'':'none';if(ok){n++;}
    });
    shown.textContent=n;
  }
  text.addEventListener('input',apply);minScore.addEventListener('input',apply);
  Array.prototype.forEach.call(boxes,function(b){b.addEventListener('change',apply);});
  apply();
})();
"""


def render_html(records: Sequence[Mapping[str, Any]], meta: ReportMeta, locations: LocationMaps | None = None) -> str:
    """The report page as one self-contained HTML document (see ``write_report`` for ``records``)."""
    buf = io.StringIO()
    write_html(buf, lambda: records, meta, locations)
    return buf.getvalue()


@dataclass
class _Summary:
    """What the page says before its table, gathered in one pass over the records."""

    records: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    scores: int = 0                  # finite scores, for the histogram
    low: float = math.inf
    high: float = -math.inf

    def add(self, r: Mapping[str, Any]) -> None:
        self.records += 1
        if r.get("status") != "ok":
            self.verdicts["ERROR"] += 1
            return
        self.verdicts[str(r.get("verdict"))] += 1
        for reg in r.get("regions") or []:
            if reg.get("defect_class") or reg.get("predicted_class"):
                self.classes[_region_type(reg)] += 1
        score = _finite_score(r)
        if score is not None:
            self.scores += 1
            self.low, self.high = min(self.low, score), max(self.high, score)


def _finite_score(r: Mapping[str, Any]) -> float | None:
    score = r.get("score")
    if r.get("status") != "ok" or score is None or not math.isfinite(score):
        return None
    return float(score)


def write_html(fh: TextIO, records: Callable[[], Iterable[Mapping[str, Any]]], meta: ReportMeta,
               locations: LocationMaps | None = None, *, pages: int = 0) -> None:
    """Write the report page into ``fh``, reading ``records()`` four times (summary, histogram, table,
    unreadable files) and holding none of them beyond the one being written. With ``pages`` (from
    `write_pages`), the table holds the flagged images and links every page."""
    summary = _Summary()
    for r in records():
        summary.add(r)
    first = True

    def emit(part: str) -> None:
        nonlocal first
        fh.write(part if first else "\n" + part)
        first = False

    for part in ("<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 '<meta name="viewport" content="width=device-width, initial-scale=1">',
                 f"<title>{_e(meta.title)}</title><style>{_CSS}</style></head><body>",
                 f"<h1>{_e(meta.title)}</h1>"):
        emit(part)
    if not meta.complete:
        emit(f'<p class="warn">This report is partial: {summary.records} of {meta.total_files} file(s) done so '
             f"far. Run the same command again to continue; it picks up where it stopped.</p>")
    rows = [("folder", meta.source), ("mode", meta.mode), ("model", meta.model), ("verdict rule", meta.rule),
            ("files", f"{meta.total_files} image file(s) found, {summary.records} in this report"),
            ("written", meta.generated)]
    if meta.thresholds is not None:
        review, fail, pixel = meta.thresholds
        rows.insert(3, ("thresholds", f"review {review:.4f}, fail {fail:.4f}, pixel {pixel:.4f}"))
    if meta.images_per_second:
        rows.append(("speed", f"{meta.images_per_second:.2f} images/s in the last run"))
    emit('<table class="meta">' + "".join(f"<tr><td><b>{_e(k)}</b></td><td>{_e(v)}</td></tr>" for k, v in rows)
         + "</table>")
    for note in meta.notes:
        emit(f'<p class="warn">{_e(note)}</p>')

    emit("<h2>Counts</h2>")
    emit('<p class="counts">' + "".join(
        f'<span><span class="v v-{v}">{v}</span> {summary.verdicts.get(v, 0)}</span>' for v in VERDICT_ORDER) + "</p>")
    if summary.classes:
        emit("<table class=\"meta\"><tr><td><b>defect class</b></td><td><b>regions</b></td></tr>" + "".join(
            f"<tr><td>{_e(name)}</td><td>{count}</td></tr>" for name, count in summary.classes.most_common())
            + "</table>")
    else:
        emit("<p>No defect classes assigned yet: counts are per verdict.</p>")

    if locations is not None:
        rows_n, cols_n = locations.grid
        background = ("the lowest-scoring PASS image of this review" if locations.reference_is_good
                      else "a flagged image of this review (no PASS image yet)")
        emit("<h2>Where the defects are</h2>")
        emit(f"<p>Centres of the defect regions on a {cols_n} x {rows_n} grid over the frame, drawn over "
             f"{_e(background)} ({_e(locations.reference)}); red: where most of them sit.</p>")
        emit('<div class="locations">' + "".join(
            f'<figure><img src="{_href(rel)}" alt="location map: {_e(name)}"><figcaption>{_e(name)}: '
            f"{n} region(s)</figcaption></figure>" for name, rel, n in locations.maps) + "</div>")

    emit("<h2>Score histogram</h2>")
    if summary.scores:
        lo, hi = _histogram_range(summary.low, summary.high, meta.thresholds)
        scores = (s for s in (_finite_score(r) for r in records()) if s is not None)
        emit(_histogram_markup(_bin_counts(scores, lo, hi, HISTOGRAM_BINS), lo, hi, meta.thresholds))
    else:
        emit(_histogram_markup(None, 0.0, 0.0, meta.thresholds))

    emit("<h2>Images</h2>")
    if pages:
        flagged = summary.records - summary.verdicts.get("PASS", 0)
        links = ", ".join(f'<a href="{PAGES_DIR}/{_page_name(n)}">{n}</a>' for n in range(1, pages + 1))
        emit(f"<p>{summary.records} images: too many for one page. Here the REVIEW, FAIL and unreadable ones"
             + (f" (the first {PAGE_ROWS} of {flagged})" if flagged > PAGE_ROWS else f" ({flagged})")
             + f"; every image, {PAGE_ROWS} a page, in the report's order: pages {links}.</p>")
        shown = (r for r in records() if r.get("status") != "ok" or r.get("verdict") != "PASS")
        _write_table(fh, itertools.islice(shown, PAGE_ROWS), emit=emit)
    else:
        _write_table(fh, records(), emit=emit)

    emit("<h2>Unreadable files</h2>")
    if summary.verdicts["ERROR"]:
        emit("<ul>")
        for r in records():
            if r.get("status") != "ok":
                fh.write(f"<li><b>{_e(r['file'])}</b>: {_e(r.get('error') or 'unknown reason')}</li>")
        fh.write("</ul>")
    else:
        emit("<p>None.</p>")
    emit("<p><small>Also in this folder: results.csv (one row per image), defects.csv (one row per defect "
         "region), overlays/ (full-size heatmaps of REVIEW and FAIL images), locations/ (the location maps).</small></p>")
    # The records as JSON too, for scripts that read the page; "</" is escaped so no text can close the tag.
    data = json.dumps({"thresholds": meta.thresholds, "mode": meta.mode}).replace("</", "<\\/")
    emit(f'<script type="application/json" id="report-meta">{data}</script>')
    emit(f"<script>{_JS}</script></body></html>")


_VERDICT_RANK: Final = {v: i for i, v in enumerate(VERDICT_ORDER)}


def _write_table(fh: TextIO, records: Iterable[Mapping[str, Any]], *, prefix: str = "",
                 emit: Callable[[str], None] | None = None) -> None:
    """The filters and the sortable table of ``records`` (thumbnail paths behind ``prefix``)."""
    put = emit or (lambda part: fh.write("\n" + part))
    put('<div class="filters"><label>file contains <input id="f-text" type="search"></label>'
        '<label>score at least <input id="f-score" type="number" step="any" style="width:7em"></label>'
        + "".join(f'<label><input type="checkbox" class="f-verdict" value="{v}" checked> {v}</label>'
                  for v in VERDICT_ORDER)
        + ' <span id="shown"></span> shown</div>')
    put('<table class="results" id="results"><thead><tr><th data-nosort>image</th><th>verdict</th>'
        "<th>score</th><th>defects</th><th>largest defect (px)</th><th>file</th></tr></thead><tbody>")
    for r in records:
        put(_table_row(r, prefix=prefix))
    put("</tbody></table>")


def _table_row(r: Mapping[str, Any], *, prefix: str = "") -> str:
    is_ok = r.get("status") == "ok"
    verdict = str(r.get("verdict")) if is_ok else "ERROR"
    score = r.get("score") if is_ok else None
    area_px, area_mm2 = _largest(r)
    n_regions = len(r.get("regions") or [])
    thumb, overlay = r.get("thumb"), r.get("overlay")
    image_cell = f'<img class="thumb" loading="lazy" src="{_href(prefix + thumb)}" alt="">' if thumb else ""
    if overlay and image_cell:
        image_cell = f'<a href="{_href(prefix + overlay)}">{image_cell}</a>'
    file_cell = _e(r["file"]) + (f'<br><small>{_e(r.get("error"))}</small>' if not is_ok else "")
    area_text = "" if area_px is None else f"{area_px}" + (f" ({area_mm2:.2f} mm²)" if area_mm2 else "")
    rank = _VERDICT_RANK.get(verdict, 9)
    return (f'<tr data-verdict="{verdict}" data-file="{_e(r["file"])}" data-score="{_fmt(score, 6)}">'
            f"<td>{image_cell}</td>"
            f'<td data-v="{rank}"><span class="v v-{_e(verdict)}">{_e(verdict)}</span></td>'
            f'<td class="num" data-v="{_fmt(score, 6)}">{_fmt(score)}</td>'
            f'<td class="num" data-v="{n_regions if is_ok else ""}">{n_regions if is_ok else ""}</td>'
            f'<td class="num" data-v="{area_px if area_px is not None else 0}">{_e(area_text)}</td>'
            f"<td>{file_cell}</td></tr>")
