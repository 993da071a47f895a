"""``benchmarks/type_transductive.py``: its "product" row is `inspector evaluate --types`' number, and the
spreading row with the product's alpha and k types as the product does wherever the k-NN does not say unknown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from benchmarks import type_labels, type_transductive
from models.defect_types import DefectTypeConfig
from models.type_evaluation import labelled_draw
from tests.models.test_type_evaluation import evaluated_widget


def test_the_product_row_is_evaluates_number_and_the_spreading_rows_are_scored(tmp_path: Path) -> None:
    data, cache, product = evaluated_widget(tmp_path)
    types, largest, _, _ = type_labels.category_embeddings(data, cache, "widget", DefectTypeConfig())
    draws = [type_transductive._draw(largest, types, labelled_draw(types, 2, seed), DefectTypeConfig())
             for seed in range(3)]
    assert [d["product"] for d in draws] == list(product.accuracy_per_draw)
    for d in draws:
        assert {"knn", "spread a=0.8 k=5", "self 1"} <= set(d) and all(0.0 <= v <= 1.0 for v in d.values())
    # with no "unknown" (a rejection distance no region reaches), the product is the spreading row
    wide = dataclasses.replace(DefectTypeConfig(), reject_distance=10.0)
    for seed in range(3):
        row = type_transductive._draw(largest, types, labelled_draw(types, 2, seed), wide)
        assert np.isclose(row["product"], row["spread a=0.8 k=5"])
