"""``benchmarks/zero_shot.py``: the batches it scores, and the per-image scores its rows keep."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import zero_shot
from models.backbone import DinoBackbone
from models.detectors.zero_shot import ZeroShotConfig, evaluate_zero_shot
from models.evaluation import GOOD, TestItem, load_category
from tests.helpers.images import write_two_type_category


def _items(n_good: int, n_bad: int) -> list[TestItem]:
    goods = [TestItem(path=Path(f"good/{i}.png"), label=0, defect_type=GOOD, mask_path=None) for i in range(n_good)]
    bad = [TestItem(path=Path(f"scratch/{i}.png"), label=1, defect_type="scratch", mask_path=Path(f"m{i}.png"))
           for i in range(n_bad)]
    return [x for pair in zip(goods, bad, strict=False) for x in pair] + goods[n_bad:] + bad[n_good:]


def test_batches_of_every_mix_come_from_the_one_subset() -> None:
    items = _items(6, 5)
    batches = zero_shot.batches_of(items, majority_good=2, minority_bad=1, good_only=True)
    assert list(batches) == ["subset 11", "defect majority 5/7", "defect minority 1/7", "good only 6"]
    assert batches["subset 11"] == items
    labels = {name: [t.label for t in batch] for name, batch in batches.items()}
    assert sorted(labels["defect majority 5/7"]) == [0, 0, 1, 1, 1, 1, 1]
    assert sorted(labels["defect minority 1/7"]) == [0] * 6 + [1]
    assert labels["good only 6"] == [0] * 6
    assert batches["defect minority 1/7"][-1] is next(t for t in items if t.label == 1)   # the first, in order
    assert all(t in items for batch in batches.values() for t in batch)
    # only what was asked for; more good images asked than there are: all of them
    assert list(zero_shot.batches_of(items, subset=False, majority_good=99)) == ["defect majority 5/11"]


def test_a_row_keeps_each_image_score_so_the_rule_can_be_judged_again(
        tmp_path: Path, full_backbone: DinoBackbone) -> None:
    root = write_two_type_category(tmp_path / "widget")
    category = load_category(root)
    backbone = DinoBackbone(full_backbone.vit, blocks=(8,), norm=full_backbone.norm)
    items = list(category.test)
    with torch.inference_mode():
        report = evaluate_zero_shot(backbone, category, config=ZeroShotConfig(shorter_side=56, max_references=4),
                                    test_items=items)
    row = zero_shot._rates(report, items)
    assert [(im["label"], im["defect_type"]) for im in row["images"]] == [(t.label, t.defect_type) for t in items]
    # named by type folder and file (no machine path), so another run's scores can be joined to these
    assert [im["image"] for im in row["images"]] == [f"{t.path.parent.name}/{t.path.name}" for t in items]
    scores = np.array([im["score"] for im in row["images"]])
    np.testing.assert_allclose(scores, report.scores)
    labels = np.array([im["label"] for im in row["images"]])
    rule = row["verdict_rule"]
    # the rates the row states follow from the scores it keeps and the thresholds it states
    assert rule["defect_flag_rate"] == pytest.approx(float((scores[labels == 1] >= rule["review"]).mean()))
    assert rule["good_flag_rate"] == pytest.approx(float((scores[labels == 0] >= rule["review"]).mean()))
    assert rule["defect_fail_rate"] == pytest.approx(float((scores[labels == 1] >= rule["fail"]).mean()))
