"""One lot, one yield: the CLI's run summary, the store's yield_summary and the app's counter agree.

The lot holds an unreadable frame (ERROR), so the test fails if any of the three counts ERROR against
the yield (the rule of `inspector.results.VerdictCounts`: PASS / (PASS + REVIEW + FAIL)).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from inspector.cli import EXIT_OK, main
from inspector.results import Verdict
from inspector.store import Store
from tests.helpers.images import textured_part, with_defect, write_images
from ui.live_view import LotCounts, YieldPanel


def test_one_lot_shows_one_yield_in_cli_store_and_app(
    qtbot, taught_recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(5)
    images = [with_defect(textured_part(rng), rng)[0] if i == 2 else textured_part(rng) for i in range(5)]
    folder = write_images(tmp_path / "lot", images)[0].parent
    (folder / "zz_broken.png").write_bytes(b"not a png")          # read by the source: an ERROR frame
    db = tmp_path / "station.db"

    assert main(["run", str(taught_recipe), "--source", str(folder), "--store", str(db), "--lot", "L1"]) == EXIT_OK
    out = capsys.readouterr().out
    match = re.search(r"PASS (\d+), REVIEW (\d+), FAIL (\d+), ERROR (\d+); yield ([\d.]+) %", out)
    assert match, out
    passed, review, failed, errors = (int(g) for g in match.groups()[:4])
    cli_yield = match.group(5)
    assert errors == 1 and passed + review + failed == 5, out
    assert float(cli_yield) == pytest.approx(100.0 * passed / 5, abs=0.05)

    store = Store(db)
    try:
        (row,) = store.yield_summary(group_by="lot")
    finally:
        store.close()
    assert (row.key, row.inspected, row.errors) == ("L1", 6, 1)
    assert f"{row.yield_pct:.1f}" == cli_yield

    with sqlite3.connect(db) as conn:
        verdicts = [Verdict(v) for (v,) in conn.execute("SELECT verdict FROM inspections WHERE lot = 'L1' ORDER BY id")]
    counts = LotCounts()
    for verdict in verdicts:               # what the main window does with each result
        counts = counts.add(verdict)
    panel = YieldPanel()
    qtbot.addWidget(panel)
    panel.set_counts(counts)
    assert panel.value("errors") == "1" and panel.value("inspected") == "6"
    assert panel.value("yield") == f"{cli_yield} %"
