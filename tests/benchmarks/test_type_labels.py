"""``benchmarks/type_labels.py``: labels on every region vs the largest; its "largest" row is the product's number."""

from __future__ import annotations

from pathlib import Path

from benchmarks import type_labels
from tests.models.test_type_evaluation import evaluated_widget


def test_the_largest_mode_reproduces_evaluate_and_both_modes_type_the_fragments(tmp_path: Path) -> None:
    data, cache, product = evaluated_widget(tmp_path)
    result = type_labels.category_run(data, cache, "widget", [0, 1, 2], n_labelled=2)
    assert result["defect_images"] == 8 and result["regions_per_image"] >= 1.0
    assert result["modes"]["largest"]["per_draw"] == list(product.accuracy_per_draw)
    assert set(result["modes"]) == {"largest", "all"}
    for mode in result["modes"].values():
        assert 0.0 <= mode["accuracy"] <= 1.0
        assert mode["fragments"] is None or 0.0 <= mode["fragments"] <= 1.0
