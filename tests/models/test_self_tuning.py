"""models.self_tune: synthetic anomalies, the choice by synthetic AUROC, the cycle-time budget (random-init ViT)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.backbone import DinoBackbone
from models.detectors import PatchKNN, PatchKNNConfig
from models.self_tune import (
    KINDS,
    Candidate,
    CandidateCheck,
    MemoBackbone,
    _choose,
    candidates_for,
    part_box,
    self_tune,
    synthesize,
    synthetic_set,
)
from tests.helpers.images import textured_part

SIZE = 84


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    return DinoBackbone(vit.eval(), blocks=(8,))


def _parts(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [textured_part(rng, SIZE)[..., ::-1].copy() for _ in range(n)]     # RGB


def _make(cfg: PatchKNNConfig, backbone: DinoBackbone) -> PatchKNN:
    return PatchKNN(backbone=backbone, config=cfg)


BASE = PatchKNNConfig(shorter_side=SIZE, masking="off", blur_sigma=1.0, augment_rotations=False)


@pytest.mark.parametrize("kind", KINDS)
def test_a_synthetic_anomaly_changes_only_its_region_on_the_part(kind: str) -> None:
    image, other = _parts(2)
    out, mask = synthesize(image, other, kind, np.random.default_rng(7))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert 0 < mask.sum() < 0.2 * mask.size                                  # a local defect, not a new image
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert np.abs(out[mask].astype(int) - image[mask].astype(int)).mean() > 3
    y0, x0, y1, x1 = part_box(image)
    ys, xs = np.nonzero(mask)
    centre = (ys.mean(), xs.mean())
    assert y0 - 8 <= centre[0] <= y1 + 8 and x0 - 8 <= centre[1] <= x1 + 8, "placed on the part"
    again, _ = synthesize(image, other, kind, np.random.default_rng(7))
    np.testing.assert_array_equal(out, again)


def test_the_part_box_finds_a_part_on_a_plain_background_and_the_centre_of_a_texture() -> None:
    frame = np.full((100, 160, 3), 40, np.uint8)
    frame[30:70, 60:120] = 200
    assert part_box(frame) == pytest.approx((30, 60, 70, 120), abs=2)
    texture = np.random.default_rng(0).integers(0, 255, (100, 160, 3), dtype=np.uint8)
    assert part_box(texture) == (20, 32, 80, 128)


def test_an_unknown_kind_is_named() -> None:
    image = np.zeros((56, 70, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown synthetic anomaly kind 'scratch'"):
        synthesize(image, image, "scratch", np.random.default_rng(0))


def test_the_synthetic_material_never_comes_from_the_bank_it_is_scored_against() -> None:
    synth = synthetic_set(_parts(9), per_image=2)
    assert len(synth) == 18 and {s.kind for s in synth} == set(KINDS)
    for s in synth:
        assert s.source % 4 == s.base % 4                  # same fold: outside the bank of the other folds
        assert s.source != s.base or sum(1 for i in range(9) if i % 4 == s.base % 4) == 1


def test_the_memo_backbone_runs_the_vit_once_per_image(backbone: DinoBackbone) -> None:
    memo = MemoBackbone(backbone)
    x = torch.randn(2, 3, 28, 28)
    first = memo(x)
    torch.testing.assert_close(first, backbone(x))
    calls = []
    handle = backbone.vit.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        torch.testing.assert_close(memo(x[[1, 0]]), first[[1, 0]])
        assert not calls, "remembered images do not run the ViT again"
        memo.bypass = True
        memo(x)
        assert calls, "bypass (timing) runs the ViT"
    finally:
        handle.remove()


def test_the_choice_is_the_candidate_that_separates_synthetic_anomalies_better(backbone: DinoBackbone) -> None:
    # a frame of 2 x 2 patches, scored by the mean of all of them, all but hides a local anomaly; the
    # second candidate (6 x 6 patches, top 1 %) separates the seeded synthetic anomalies better and must
    # win although listed later
    cands = [Candidate(name="all patches", options={"top_percent": 100.0, "shorter_side": 28}),
             Candidate(name="top 1 %")]
    result = self_tune(_parts(8), _make, BASE, cands, backbone)
    by_name = {c.candidate.name: c for c in result.checks}
    assert by_name["top 1 %"].synthetic_auroc > by_name["all patches"].synthetic_auroc
    assert result.chosen.name == "top 1 %"
    assert len(by_name["top 1 %"].good_scores) == 8 and len(by_name["top 1 %"].synthetic_scores) == 16
    assert result.reason.startswith("chose top 1 %") and "no cycle-time limit" in result.reason
    lines = result.summary_lines()
    assert any(line.startswith("  * top 1 %") for line in lines), lines
    data = result.to_dict()
    assert data["chosen"] == "top 1 %" and len(data["candidates"]) == 2


def test_a_budget_below_a_candidates_cost_skips_it(backbone: DinoBackbone) -> None:
    cands = candidates_for(BASE, (SIZE, SIZE))[:2]
    assert [c.name for c in cands] == ["default (pooling r=1, + r=5 image score)", "pooling r=3"]
    first = self_tune(_parts(6), _make, BASE, cands, backbone, budget_ms=None)
    assert not any(c.over_budget for c in first.checks)
    costs = [c.ms_per_part for c in first.checks]
    assert all(ms > 0 for ms in costs)
    # below both costs: nothing is checked for accuracy, the fastest is taken and the report says so
    tight = self_tune(_parts(6), _make, BASE, cands, backbone, budget_ms=min(costs) / 1000.0)
    assert all(c.over_budget and c.synthetic_auroc is None for c in tight.checks)
    assert "no candidate fits" in tight.reason and "chose the fastest" in tight.reason
    assert any("skipped: over the cycle-time budget" in line for line in tight.summary_lines())


@pytest.mark.parametrize(("ms", "chosen"), [((1000.0, 950.0, 1200.0), "default"), ((1000.0, 880.0, 1200.0), "r=3"),
                                             ((1400.0, 1250.0, 1200.0), "r=3")])
def test_when_nothing_fits_timing_noise_keeps_the_earlier_candidate(ms: tuple[float, ...], chosen: str) -> None:
    checks = [CandidateCheck(candidate=Candidate(name=name), ms_per_part=t, over_budget=True)
              for name, t in zip(("default", "r=3", "turned"), ms, strict=True)]
    result = _choose(checks, budget_ms=500.0, n_good=8, n_synthetic=16)
    assert result.chosen.name == chosen   # within 10 % of the fastest: the earlier one
    assert f"the fastest takes {min(ms):.0f} ms per part" in result.reason and "chose the fastest" in result.reason


@pytest.mark.parametrize(("aurocs", "chosen", "near_tie"), [
    ((0.900, 0.903, 0.850), "r=3", True), ((0.900, 0.920, 0.850), "r=3", False),
    ((0.910, 0.903, 0.850), "default", False)])
def test_a_choice_by_less_than_the_check_can_tell_apart_is_called_a_near_tie(
        aurocs: tuple[float, ...], chosen: str, near_tie: bool) -> None:
    checks = [CandidateCheck(candidate=Candidate(name=name), ms_per_part=100.0, over_budget=False, synthetic_auroc=a)
              for name, a in zip(("default", "r=3", "turned"), aurocs, strict=True)]
    result = _choose(checks, budget_ms=None, n_good=16, n_synthetic=32)
    assert result.chosen.name == chosen          # the choice itself is the highest, as before
    assert ("a near tie: 0.003 above default" in result.reason) is near_tie, result.reason
    assert ("near tie" in result.summary_lines()[0]) is near_tie


def test_tiling_is_a_candidate_only_for_large_frames() -> None:
    assert [c.name for c in candidates_for(BASE, (SIZE, SIZE))] == ["default (pooling r=1, + r=5 image score)",
                                                                     "pooling r=3", "whitened"]
    # the pooling alone, as it was measured: no second scale on top of it
    assert candidates_for(BASE, (SIZE, SIZE))[1].options == {"patch_pooling": 3, "second_scale": 0}
    large = candidates_for(BASE, (4 * SIZE, 5 * SIZE))
    assert [c.name for c in large][-1] == "tiling" and large[-1].options["tiling"] == "on"


def test_the_whitened_space_is_a_candidate_unless_the_recipe_whitens_or_tiles() -> None:
    cands = candidates_for(BASE, (SIZE, SIZE))
    assert cands[2].name == "whitened" and cands[2].options == {"whitening": True}
    for written in (dataclasses.replace(BASE, whitening=True), dataclasses.replace(BASE, tiling="on")):
        assert "whitened" not in [c.name for c in candidates_for(written, (SIZE, SIZE))]


def test_turned_views_are_a_candidate_only_where_auto_rotations_leave_them_out(backbone: DinoBackbone) -> None:
    auto = PatchKNNConfig(shorter_side=SIZE, masking="on", blur_sigma=1.0, rotation_max_shots=4)
    assert "turned views" not in [c.name for c in candidates_for(auto, (SIZE, SIZE))]       # count not known
    assert "turned views" not in [c.name for c in candidates_for(auto, (SIZE, SIZE), 4)]    # auto turns them
    assert "turned views" not in [c.name for c in candidates_for(BASE, (SIZE, SIZE), 9)]    # off by choice
    fixed = PatchKNNConfig(shorter_side=SIZE, masking="off", rotation_max_shots=4, position_radius=2.0)
    assert "turned views" not in [c.name for c in candidates_for(fixed, (SIZE, SIZE), 9)]   # positions would turn
    cands = candidates_for(auto, (SIZE, SIZE), 5)
    assert [c.name for c in cands][-1] == "turned views" and cands[-1].options == {"augment_rotations": True}
    # each candidate's folds are fitted with what the taught model will do: auto pinned off (5 > 4 images)
    # for the others, the candidate's turned views for it
    seen: list[tuple[int, bool]] = []

    def make(cfg: PatchKNNConfig, bb: DinoBackbone) -> PatchKNN:
        detector = _make(cfg, bb)
        original = detector.fit

        def fit(frames: list[np.ndarray]) -> None:
            original(frames)
            seen.append((len(frames), detector.rotations_used))

        detector.fit = fit  # type: ignore[method-assign]
        return detector

    result = self_tune(_parts(5), make, auto, [cands[0], cands[-1]], backbone)
    assert {c.candidate.name for c in result.checks} == {cands[0].name, "turned views"}
    assert seen[:5] == [(5, False), (3, False), (4, False), (4, False), (4, False)]   # banks of 3-4 in folds
    assert seen[5:] == [(5, True), (3, True), (4, True), (4, True), (4, True)]
    assert not result.not_checked


def test_turned_views_are_not_checked_where_the_base_sees_no_part_on_a_plain_background(
        backbone: DinoBackbone) -> None:
    # a texture or a board that fills the frame (masking decided off) keeps its orientation: the turned
    # views are left out, the report says why, and the progress still reaches its total
    filled = PatchKNNConfig(shorter_side=SIZE, masking="off", blur_sigma=1.0, rotation_max_shots=4)
    cands = candidates_for(filled, (SIZE, SIZE), 5)
    assert cands[-1].name == "turned views" and cands[-1].plain_background_only
    steps: list[tuple[int, int]] = []
    result = self_tune(_parts(5), _make, filled, cands, backbone, progress=lambda d, t: steps.append((d, t)))
    assert [c.candidate.name for c in result.checks] == [c.name for c in cands[:-1]]
    assert [name for name, _ in result.not_checked] == ["turned views"]
    assert any(line.startswith("  - turned views: not checked, the good images show no part on a plain")
               for line in result.summary_lines()), result.summary_lines()
    assert result.to_dict()["not_checked"][0]["name"] == "turned views"
    assert steps[-1] == (20, 20) and all(d <= t for d, t in steps)     # 5 images x 4 candidates (3 checked)


def test_too_few_images_are_refused_with_the_number() -> None:
    with pytest.raises(ValueError, match="at least 3 good images \\(got 2\\)"):
        self_tune(_parts(2), _make, BASE, candidates_for(BASE, (SIZE, SIZE)), DinoBackbone.__new__(DinoBackbone))
