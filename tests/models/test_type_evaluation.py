"""``evaluate_defect_types`` end to end on a tiny synthetic category, and its cache (features, maps, good bank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.defect_types import DefectTypeConfig
from models.type_evaluation import evaluate_defect_types
from tests.helpers.images import TYPE_SIZE, write_two_type_category

SIZE = TYPE_SIZE


@pytest.fixture
def two_types(tmp_path: Path) -> Path:
    """A category with 4 train/good images and 4 scratches and 4 blobs under test/."""
    return write_two_type_category(tmp_path / "widget")


def _make_detector() -> Any:
    from models.backbone import create_backbone
    from models.detectors import PatchKNN, PatchKNNConfig

    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    return PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=SIZE, masking="off",
                                                             augment_rotations=False))


def evaluated_widget(tmp_path: Path, *, config: DefectTypeConfig | None = None) -> tuple[Path, Path, Any]:
    """A two-type category "widget" under ``tmp_path / "data"``, typed by `evaluate_defect_types` (2 labelled per
    type, 3 draws) into the cache ``tmp_path / "cache"``: (data, cache, its result), what the typing benchmarks read."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_two_type_category(data / "widget")
    product = evaluate_defect_types(_make_detector, data / "widget", n_labelled=2, shots=None, repeats=3,
                                    cache_dir=cache, config=config)
    return data, cache, product


def _no_detector() -> Any:
    msg = "the cache should have made the detector unnecessary"
    raise AssertionError(msg)


def test_typing_is_measured_and_a_rerun_from_the_cache_needs_no_backbone(two_types: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = evaluate_defect_types(_make_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    assert first.n_types == 2 and first.n_defect_images == 8 and first.n_typed_per_draw == 4
    assert 0.0 <= first.accuracy <= 1.0 and len(first.accuracy_per_draw) == 2
    assert first.config["residual"] is True          # the default descriptor needs the good bank ...
    folders = list(cache.iterdir())
    assert len(folders) == 1 and (folders[0] / "bank.npy").is_file()   # ... which the cache keeps
    assert first.config["crop_side"] == 224 and len(list(folders[0].glob("*.crop224.npy"))) == 8   # crops too
    again = evaluate_defect_types(_no_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    assert again.accuracy_per_draw == first.accuracy_per_draw and again.per_type == first.per_type
    # without the residual the embeddings are other ones, from the same cached features and maps
    plain = evaluate_defect_types(_no_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache,
                                  config=DefectTypeConfig(residual=False))
    assert plain.config["residual"] is False and plain.n_typed_per_draw == 4


def test_the_cache_remembers_whether_the_detector_standardised_its_frames(two_types: Path, tmp_path: Path) -> None:
    """The crop pass cuts its crops from the frame as the detector saw it, so the cache keeps that decision."""
    import json

    cache = tmp_path / "cache"
    first = evaluate_defect_types(_make_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    (folder,) = cache.iterdir()
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["brightness_active"] is True      # masking off: the scene fills the frame, so "auto" standardises
    # a cache written before the option (no key) with its crops to make: the detector is fitted to learn it
    del meta["brightness_active"]
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    for crop in folder.glob("*.crop224.npy"):
        crop.unlink()
    with pytest.raises(AssertionError, match="unnecessary"):
        evaluate_defect_types(_no_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    again = evaluate_defect_types(_make_detector, two_types, n_labelled=2, shots=None, repeats=2, cache_dir=cache)
    assert again.accuracy_per_draw == first.accuracy_per_draw and again.per_type == first.per_type
    assert json.loads((folder / "meta.json").read_text(encoding="utf-8"))["brightness_active"] is True


def test_the_draws_can_be_seeded_apart_from_the_shots(two_types: Path, tmp_path: Path) -> None:
    """``draw_seed`` fixes the labelled draws and the capped choice of images while the shots' seed varies."""
    import torch

    def same_detector() -> Any:          # the same (random) backbone for both seeds: torch seeded first
        torch.manual_seed(0)
        return _make_detector()

    cache = tmp_path / "cache"
    # all good images are the shots (shots=None): the shot seed changes nothing, so the draws alone decide
    apart = evaluate_defect_types(same_detector, two_types, n_labelled=1, shots=None, seed=0, draw_seed=7,
                                  repeats=2, max_per_type=3, cache_dir=cache)
    together = evaluate_defect_types(same_detector, two_types, n_labelled=1, shots=None, seed=7, repeats=2,
                                     max_per_type=3, cache_dir=cache)
    assert apart.shot_seed == 0 and together.shot_seed == 7
    assert apart.seeds == together.seeds == (7, 8)
    assert apart.n_defect_images == 6 and apart.accuracy_per_draw == together.accuracy_per_draw
    plain = evaluate_defect_types(same_detector, two_types, n_labelled=1, shots=None, seed=0, repeats=2,
                                  max_per_type=3, cache_dir=cache)
    assert plain.seeds == (0, 1) and plain.to_dict()["shot_seed"] == 0
