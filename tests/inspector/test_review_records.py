"""The review journal with its records on disk (the Ray driver's): a report streamed from it equals the one
written from records held in memory, and neither reading the journal nor writing the report holds them."""

from __future__ import annotations

import json
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspector._report import ReportMeta
from inspector.errors import InspectorError
from inspector.review import JOURNAL_NAME, Journal, finish_review

N = 20_000
HEADER = {"version": 1, "mode": "recipe", "recipe": "part", "model_version": "v1"}


def _record(name: str, i: int) -> dict[str, Any]:
    if i % 997 == 3:
        return {"file": name, "status": "error", "error": "not an image: cannot decode"}
    regions = [{"x": 10 + k, "y": 20, "width": 8, "height": 6, "area_px": 40 + i % 50 + k, "area_mm2": None,
                "max_score": 0.5 + (i % 7) / 20, "mean_score": 0.4, "defect_class": None,
                "predicted_class": "scratch" if i % 3 == 0 else None, "type_confidence": 0.8 if i % 3 == 0 else None}
               for k in range(i % 3)]
    verdict = "FAIL" if len(regions) == 2 else "REVIEW" if regions else "PASS"
    return {"file": name, "status": "ok", "verdict": verdict, "score": (i % 101) / 100, "regions": regions,
            "width": 448, "height": 448, "thumb": f"thumbs/{name[:-4]}.jpg",
            "overlay": f"overlays/{name[:-4]}.jpg" if regions else None}


def _meta() -> ReportMeta:
    return ReportMeta(title="Review of lot", mode="recipe", source="lot", model="recipe part, model v1",
                      thresholds=(0.3, 0.6, 0.4), rule="the recipe's thresholds", total_files=N, complete=True,
                      generated="2026-12-02T10:00:00+00:00")


@pytest.fixture(scope="module")
def names() -> list[str]:
    return [f"day_{i // 1000:02d}/img_{i:05d}.png" for i in range(N)]


def test_records_on_disk_give_the_same_report_without_holding_them(tmp_path: Path, names: list[str]) -> None:
    folder = tmp_path / "lot"                 # the walk is given: the report needs no image files

    def walk() -> Iterator[Path]:
        return (folder / name for name in names)

    disk, memory = tmp_path / "disk", tmp_path / "memory"
    disk.mkdir()
    Journal(disk / JOURNAL_NAME, HEADER, on_disk=True).close()       # the header line
    index = disk / f".{Path(JOURNAL_NAME).stem}-index.sqlite"
    assert not index.exists()                 # the index is a cache, removed with the journal
    # the records as a run appends them (one write here: 20,000 fsyncs would only test the disk)
    done = [_record(names[i + d], i + d) for i in range(0, N, 2) for d in (1, 0)]   # out of order, as from Ray
    done.append(_record(names[5], 5) | {"score": 0.99})   # a file done again: its last record wins
    with (disk / JOURNAL_NAME).open("a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in done)
    del done
    memory.mkdir()
    shutil.copy(disk / JOURNAL_NAME, memory / JOURNAL_NAME)

    finish_review(folder, disk, lambda: iter([folder / names[0]]), Journal(disk / JOURNAL_NAME, HEADER),
                  _meta(), resumed=1, scored=0, mode="recipe")     # once small: imports and caches not counted
    tracemalloc.start()
    journal = Journal(disk / JOURNAL_NAME, HEADER, on_disk=True)   # a restarted driver reads the journal back
    read_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    on_disk = finish_review(folder, disk, walk, journal, _meta(), resumed=N, scored=0, mode="recipe")
    report_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(journal.records) == N and index.exists()
    journal.close()

    tracemalloc.start()
    held = Journal(memory / JOURNAL_NAME, HEADER)
    in_memory = finish_review(folder, memory, list(walk()), held, _meta(), resumed=N, scored=0, mode="recipe")
    memory_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    for name in ("results.csv", "defects.csv", "index.html"):
        assert (disk / name).read_bytes() == (memory / name).read_bytes(), name
    assert {k: v for k, v in on_disk.items() if k not in ("out", "report")} == \
           {k: v for k, v in in_memory.items() if k not in ("out", "report")}
    assert on_disk["files"] == N and sum(on_disk["counts"].values()) == N and on_disk["counts"]["ERROR"] == 21
    assert "0.990000" in (disk / "results.csv").read_text(encoding="utf-8").split("img_00005.png", 1)[1][:40]
    # Holding the records costs 46 MB here (20,000 of them); the streamed run peaked at 0.04 MB reading the
    # journal and 4-8 MB writing the report (pathlib's and SQLite's caches, flat from 20,000 to 40,000 records).
    # tracemalloc counts every thread: in a full test run, threads other tests left winding down add to the
    # streamed peak (15 MB seen once), hence a factor 2 and not the 6 measured alone
    assert max(read_peak, report_peak) * 2 < memory_peak, (read_peak, report_peak, memory_peak)


def test_a_journal_on_disk_refuses_another_review_and_leaves_no_index(tmp_path: Path) -> None:
    Journal(tmp_path / JOURNAL_NAME, HEADER, on_disk=True).close()
    with pytest.raises(InspectorError, match=r"holds a review made with other settings \(recipe differ"):
        Journal(tmp_path / JOURNAL_NAME, HEADER | {"recipe": "other"}, on_disk=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [JOURNAL_NAME]


def test_a_cut_off_last_line_is_done_again(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    journal = Journal(path, HEADER, on_disk=True)
    journal.append(_record("a.png", 1))
    journal.close()
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"file": "b.png", "sta')                       # a process killed mid-write
    journal = Journal(path, HEADER, on_disk=True)
    assert list(journal.records) == ["a.png"] and "b.png" not in journal.records
    journal.append(_record("b.png", 2))
    journal.close()
    assert [line[:14] for line in path.read_text(encoding="utf-8").splitlines()[1:]] == \
           ['{"file": "a.pn', '{"file": "b.pn', '{"file": "b.pn']
