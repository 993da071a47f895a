"""``benchmarks.accuracy --self-tune``: the row 'ours self-tuned' uses what teaching would choose from the shots."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from types import SimpleNamespace

from benchmarks._features import CachedBackbone, FeatureStore
from benchmarks.accuracy import _self_tuned
from models.detectors.patch_knn import PatchKNN, PatchKNNConfig
from models.evaluation import load_image_rgb, select_shots
from models.self_tune import candidates_for, self_tune
from tests.benchmarks.conftest import SHORTER_SIDE


def test_self_tuned_row_takes_the_choice_of_models_self_tune_on_the_seeds_shots(
    parts: dict[str, list[Path]], store: FeatureStore
) -> None:
    config = PatchKNNConfig(shorter_side=SHORTER_SIDE)
    category = SimpleNamespace(name="parts", train_good=parts["train"])
    args = argparse.Namespace(neighbourhood=1)
    chosen, tuned = _self_tuned(config, category, 3, 1, args, (8,), store)

    shots = select_shots(parts["train"], 3, seed=1)
    images = [load_image_rgb(p) for p in shots]
    direct = self_tune(images, lambda cfg, bb: PatchKNN(backbone=bb, config=cfg), config,
                       candidates_for(config, images[0].shape[:2]), CachedBackbone(store, blocks=(8,)))
    assert chosen == dataclasses.replace(config, **direct.chosen.options)
    assert tuned["chosen"] == direct.chosen.name and tuned["n_good"] == 3
    assert [c["name"] for c in tuned["candidates"]] == ["default (pooling r=1, + r=5 image score)", "pooling r=3",
                                                       "whitened"]
    assert [c["synthetic_auroc"] for c in tuned["candidates"]] == [c.synthetic_auroc for c in direct.checks]
    assert all("good_scores" not in c and "synthetic_scores" not in c for c in tuned["candidates"])
