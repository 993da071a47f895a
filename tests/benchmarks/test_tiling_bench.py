"""benchmarks/tiling.py: the scenes hold their defects where they say, and the AUROC arithmetic is right."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.tiling import SCENES, auroc, scene


def test_auroc_counts_pairs_and_half_the_ties() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert auroc(np.array([0.2, 0.2]), np.array([0.2, 0.2])) == 0.5
    assert auroc(np.array([0.1, 0.3]), np.array([0.2, 0.4])) == 0.75


@pytest.mark.parametrize("name", SCENES)
def test_each_scene_puts_its_defect_where_it_says(name: str) -> None:
    good, none = scene(name, np.random.default_rng(5), 224, defect=False)
    bad, centre = scene(name, np.random.default_rng(5), 224, defect=True)
    assert none is None and centre is not None
    assert good.shape == bad.shape == (224, 224, 3) and good.dtype == np.uint8
    y, x = centre
    if name.startswith("aligned"):        # the component's corner region: bright where it moved, dark where gone
        corner = bad[y - 224 // 24 : y - 224 // 24 + 3, x - 224 // 24 : x - 224 // 24 + 3, 0].astype(float)
        assert corner.mean() > 150 if name == "aligned_moved" else corner.mean() < 110, corner.mean()
    else:                                 # the same seed draws the same texture: only the 3 x 3 px defect differs
        changed = np.argwhere(good[..., 0] != bad[..., 0])
        assert changed.size and np.abs(changed - np.array(centre)).max() <= 1, changed
