"""The review report's location maps: where on the frame the defect regions sit, over a good image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector._report import ReportMeta, location_counts, write_location_maps, write_report

W, H = 640, 480


def _region(x: int, y: int, *, kind: str | None = None, confirmed: str | None = None) -> dict[str, Any]:
    return {"x": x, "y": y, "width": 20, "height": 20, "area_px": 300, "area_mm2": None, "max_score": 0.9,
            "mean_score": 0.7, "defect_class": confirmed, "predicted_class": kind, "type_confidence": 0.8}


def _record(name: str, verdict: str, regions: list[dict[str, Any]], *, size: tuple[int, int] = (W, H)
            ) -> dict[str, Any]:
    return {"file": name, "status": "ok", "verdict": verdict, "score": 0.5, "regions": regions,
            "width": size[0], "height": size[1], "thumb": f"thumbs/{name}.jpg", "overlay": None}


def _report_folder(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    out = tmp_path / "report"
    (out / "thumbs").mkdir(parents=True)
    for r in records:
        cv2.imwrite(str(out / r["thumb"]), np.full((120, 160, 3), 128, np.uint8))
    return out


def _records() -> list[dict[str, Any]]:
    top_left = [_region(10, 10, kind="scratch") for _ in range(3)]
    return [
        _record("bad_1.png", "FAIL", top_left[:2]),
        _record("good_1.png", "PASS", []),
        # a reviewer's class wins over the guess; a smaller frame of the same part maps to the same cell
        _record("bad_2.png", "REVIEW", [_region(600, 440, kind="scratch", confirmed="dent <b>")]),
        _record("bad_3.png", "FAIL", [_region(5, 5, kind="scratch")], size=(320, 240)),
    ]


def test_region_centres_are_counted_per_type_on_the_frame_grid() -> None:
    counts = location_counts(_records(), (9, 12))
    assert set(counts) == {"scratch", "dent <b>"}
    assert counts["scratch"][0, 0] == 3 and counts["scratch"].sum() == 3
    assert counts["dent <b>"][8, 11] == 1 and counts["dent <b>"].sum() == 1


def test_maps_are_drawn_over_the_lowest_scoring_pass_image_and_shown_in_the_page(tmp_path: Path) -> None:
    records = _records()
    # the first PASS scores higher (in a zero-shot review it may be a missed defect): not the background
    records.insert(1, {**_record("good_0.png", "PASS", []), "score": 0.3})
    records[2]["score"] = 0.2
    out = _report_folder(tmp_path, records)
    maps = write_location_maps(out, records)
    assert maps is not None and maps.reference == "good_1.png" and maps.reference_is_good
    assert maps.grid == (9, 12)
    assert [(name, n) for name, _, n in maps.maps] == [("all types", 4), ("scratch", 3), ("dent <b>", 1)]
    image = cv2.imread(str(out / maps.maps[0][1]))
    assert image.shape == (240, 320, 3)
    grey = np.array([128, 128, 128])
    assert np.abs(image[8, 8].astype(int) - grey).max() > 40, "heat where the defects sit (top left)"
    assert np.abs(image[120, 160].astype(int) - grey).max() <= 2, "the good image untouched where there are none"

    meta = ReportMeta(title="Review", mode="recipe", source="batch", model="recipe part, model v1",
                      thresholds=(0.4, 0.6, 0.5), rule="r", total_files=5, complete=True, generated="now")
    page = write_report(out, records, meta).read_text(encoding="utf-8")
    assert "Where the defects are" in page and "the lowest-scoring PASS image of this review (good_1.png)" in page
    assert page.count('<img src="locations/map-') == 3
    assert "dent &lt;b&gt;: 1 region(s)" in page and "dent <b>" not in page


def test_no_regions_no_maps_and_a_flagged_image_stands_in_without_a_pass(tmp_path: Path) -> None:
    clean = [_record("good_1.png", "PASS", [])]
    assert write_location_maps(_report_folder(tmp_path / "a", clean), clean) is None
    flagged_only = [r for r in _records() if r["verdict"] != "PASS"]
    maps = write_location_maps(_report_folder(tmp_path / "b", flagged_only), flagged_only)
    assert maps is not None and not maps.reference_is_good and maps.reference == "bad_1.png"


def test_a_long_report_pages_its_images_and_the_index_shows_the_flagged(tmp_path: Path, monkeypatch) -> None:
    from inspector import _report

    monkeypatch.setattr(_report, "PAGE_ROWS", 4)
    verdicts = ["PASS", "FAIL", "PASS", "PASS", "REVIEW", "PASS", "PASS", "PASS", "FAIL", "PASS", "PASS"]
    records: list[dict[str, Any]] = [_record(f"img_{i:02d}.png", v, []) for i, v in enumerate(verdicts)]
    records[6] = {"file": "img_06.png", "status": "error", "error": "not a decodable image"}
    out = _report_folder(tmp_path, [r for r in records if r["status"] == "ok"])
    meta = ReportMeta(title="Review", mode="recipe", source="batch", model="m", thresholds=(0.4, 0.6, 0.5),
                      rule="r", total_files=len(records), complete=True, generated="now")

    def rows(html: str) -> list[str]:
        return [part.split('"', 1)[0] for part in html.split('<tr data-verdict="')[1:]]

    def files(html: str) -> list[str]:
        return [part.split('"', 1)[0] for part in html.split('data-file="')[1:]]

    index = write_report(out, records, meta).read_text(encoding="utf-8")
    # the index: the flagged and unreadable images (the first 4 of 4 here), and a link to every page
    assert files(index) == ["img_01.png", "img_04.png", "img_06.png", "img_08.png"]
    assert "11 images: too many for one page" in index
    assert all(f'href="pages/images-000{n}.html"' in index for n in (1, 2, 3))
    pages = sorted((out / "pages").glob("*.html"))
    assert [p.name for p in pages] == ["images-0001.html", "images-0002.html", "images-0003.html"]
    texts = [p.read_text(encoding="utf-8") for p in pages]
    assert [files(t) for t in texts] == [[r["file"] for r in records[i:i + 4]] for i in (0, 4, 8)]
    assert rows(texts[2]) == ["FAIL", "PASS", "PASS"]
    assert 'src="../thumbs/img_00.png.jpg"' in texts[0], "thumbnails one folder up"
    assert 'href="images-0002.html">next page' in texts[0] and "previous page" not in texts[0]
    assert 'href="images-0002.html">previous page' in texts[2] and "next page" not in texts[2]
    assert all('href="../index.html"' in t and "<script>" in t for t in texts)
    assert (out / "results.csv").read_text(encoding="utf-8").count("\n") == 12, "the CSV keeps every image"

    # the records are streamed (a review's journal can hold hundreds of thousands): counted while the CSV
    # is written, not in a pass of their own
    passes = 0

    def stream() -> list[dict[str, Any]]:
        nonlocal passes
        passes += 1
        return records

    write_report(out, stream, meta)
    # results.csv, defects.csv, the location maps' reference and counts, the pages, the index's four: no pass
    # only to count the pages (there were 10)
    assert passes == 9

    # the review grows no longer: a shorter report takes its pages back; a short one needs none
    write_report(out, records[:5], meta)
    assert sorted(p.name for p in (out / "pages").glob("*.html")) == ["images-0001.html", "images-0002.html"]
    index = write_report(out, records[:3], meta).read_text(encoding="utf-8")
    assert list((out / "pages").glob("*.html")) == [] and "too many for one page" not in index
    assert files(index) == ["img_00.png", "img_01.png", "img_02.png"]


def test_the_index_says_when_it_shows_only_the_first_flagged(tmp_path: Path, monkeypatch) -> None:
    from inspector import _report

    monkeypatch.setattr(_report, "PAGE_ROWS", 2)
    records = [_record(f"img_{i}.png", "FAIL", []) for i in range(5)]
    out = _report_folder(tmp_path, records)
    meta = ReportMeta(title="Review", mode="recipe", source="batch", model="m", thresholds=(0.4, 0.6, 0.5),
                      rule="r", total_files=5, complete=True, generated="now")
    index = write_report(out, records, meta).read_text(encoding="utf-8")
    assert "(the first 2 of 5)" in index and index.count('<tr data-verdict="FAIL"') == 2
