"""One-image calibration (models/detectors/one_shot.py): regions of the frame and of its turned views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backbone import create_backbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors.one_shot import region_leave_out_scores
from models.preprocess import frame_geometry


def _image_score(patch_scores: torch.Tensor) -> torch.Tensor:
    return patch_scores.flatten(1).mean(dim=1)


def _frame(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(h, w, 16) random unit features: every patch unlike every other."""
    feats = torch.randn(h, w, 16, generator=torch.Generator().manual_seed(seed))
    return feats / feats.norm(dim=-1, keepdim=True)


def _scores(frame: torch.Tensor, turned: list[tuple[float, torch.Tensor]]) -> np.ndarray:
    h, w = frame.shape[:2]
    geo = frame_geometry(h * 14, w * 14, shorter_side=min(h, w) * 14)
    scores, maps = region_leave_out_scores(frame, geo, image_score=_image_score, turned=turned)
    assert len(maps) == len(scores)
    return scores


@pytest.mark.parametrize(("h", "w", "turns"), [(8, 8, (1, 2, 3)), (8, 10, (2,))])
def test_a_turned_copy_never_lets_a_region_match_itself(h: int, w: int, turns: tuple[int, ...]) -> None:
    frame = _frame(h, w)
    alone = _scores(frame, [])
    assert (alone > 0.1).all(), alone
    # the same patches turned by right angles (as rotate_frame turns the frame): each patch's own copy lies
    # at its turned place, inside the neighbourhood left out there, and every other patch as far as before
    turned = [(90.0 * k, torch.rot90(frame, k, dims=(0, 1))) for k in turns]
    np.testing.assert_allclose(_scores(frame, turned), alone, rtol=1e-6)


def test_a_region_matches_its_look_alike_in_a_turned_view() -> None:
    frame = _frame(8, 8)
    # a turned view in which every patch's look sits half the frame away from where that patch lies:
    # another part of the frame seen at another angle, as the next good part placed turned would be
    moved = torch.rot90(torch.roll(frame, shifts=4, dims=0), 1, dims=(0, 1))
    assert (_scores(frame, [(90.0, moved)]) < 1e-6).all()
    # the same view read as turned the other way round maps the patches elsewhere: then it is not found
    # at every patch (a wrong source mapping would show here)
    assert (_scores(frame, [(270.0, moved)]) > 1e-6).all()


def test_a_turned_view_of_another_size_is_refused() -> None:
    frame = _frame(8, 8)
    with pytest.raises(ValueError, match="turned view"):
        _scores(frame, [(90.0, _frame(8, 9))])


def test_one_frame_with_rotations_scores_its_regions_against_its_turned_views_too() -> None:
    from tests.helpers.images import textured_part

    torch.manual_seed(0)
    backbone = create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")
    frame = textured_part(np.random.default_rng(3), 112)[..., ::-1].copy()
    # the fine scale's region scores (their fusion with the coarse scale's: tests/models/test_scales.py)
    plain = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=112, augment_rotations=False,
                                                              second_scale=0))
    plain.fit([frame])
    turned = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=112, augment_rotations=True,
                                                               second_scale=0))
    turned.fit([frame])
    assert plain.train_scores.shape == turned.train_scores.shape == (3,)
    # more places to match, never a nearer self: no score rises, and a round part's regions find look-alikes
    assert (turned.train_scores <= plain.train_scores + 1e-6).all(), (turned.train_scores, plain.train_scores)
    assert (turned.train_scores < plain.train_scores - 1e-4).any(), (turned.train_scores, plain.train_scores)
