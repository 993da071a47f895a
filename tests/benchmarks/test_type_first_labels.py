"""benchmarks/type_first_labels.py: the first labels of one type, the classifier before and now."""

from __future__ import annotations

import numpy as np

from benchmarks.type_first_labels import CentredOnOneType, first_labels
from models.defect_types import DefectTypeClassifier, DefectTypeConfig

PLAIN = DefectTypeConfig(colour_weight=0.0)


def _items(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Two kinds of defect, each a tight cluster around its own direction (plus what the part shares)."""
    shared = np.zeros(32, np.float32)
    shared[0] = 3.0
    items = []
    for kind, axis in (("scratch", 1), ("dent", 2)):
        centre = shared.copy()
        centre[axis] = 1.0
        items += [(kind, centre + 0.05 * rng.standard_normal(32).astype(np.float32)) for _ in range(8)]
    return items


def test_before_every_defect_was_the_one_type_now_the_other_kind_is_set_apart() -> None:
    items = _items(np.random.default_rng(0))
    before = first_labels(items, labels=2, draws=5, make=lambda: CentredOnOneType(config=PLAIN))
    now = first_labels(items, labels=2, draws=5, make=lambda: DefectTypeClassifier(config=PLAIN))
    assert before["set_apart"] == 0.0 and before["kept"] == 1.0 and before["confidence_median"] == 1.0
    assert now["set_apart"] == 1.0 and now["kept"] > 0.3 and now["confidence_median"] < 1.0
    assert now["runs"] == before["runs"] == 10                  # both types, 5 draws each
