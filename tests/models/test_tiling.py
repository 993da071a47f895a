"""Tiling of high-resolution frames (PatchKNNConfig.tiling; issue 11): layout, stitching, a 3-pixel defect.

The frames are 224 x 224 and the model's resolution is 56 px (``shorter_side=56``): the untiled detector
shrinks a frame 4x, as a 5 MP camera frame (2448 x 2048) is shrunk ~4.6x at the default 448 px. The tiled
one scores 56-px tiles at the frame's native resolution. The texture is fine horizontal stripes (period
2 px); the defect is a 3 x 3 px spot where the stripes run the other way: same mean grey, so shrinking
averages it away, while at native resolution its patch looks like nothing in the bank. The backbone is the
random-init ViT-S/14 cut at block 2 of the other model tests (fast; its features still tell the stripes apart).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from models.backbone import DinoBackbone, create_backbone
from models.calibration import calibrate
from models.detectors import PatchKNN, PatchKNNConfig
from models.detectors._tiling import TileLayout, cut_tiles, rotate_tiles, stitch, tile_layout
from models.preprocess import frame_geometry
from models.saved import MODEL_JSON, MODEL_TENSORS, _manifest_digest, load_detector, read_manifest, save_detector

SIZE = 224  # frame side; 16 x 16 patch cells at native resolution
MODEL = 56  # the model's resolution (shorter_side): 4 x 4 cells per tile; untiled, the frame shrinks 4x
DEFECT = (130, 90)  # top-left (y, x) of the 3 x 3 defect


def stripes(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """Horizontal stripes of period 2 px (90 / 166 grey) with fine noise: (size, size, 3) uint8."""
    base = np.where((np.arange(size) % 2 == 0)[:, None], 90.0, 166.0) * np.ones((1, size))
    return np.clip(base + rng.normal(0.0, 8.0, (size, size)), 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def with_defect(frame: np.ndarray, y: int = DEFECT[0], x: int = DEFECT[1]) -> np.ndarray:
    """The frame with a 3 x 3 px spot of vertical stripes (the same mean grey as the horizontal ones)."""
    out = frame.copy()
    out[y : y + 3, x : x + 3] = np.array([[90, 166, 90]] * 3, np.uint8)[..., None]
    return out


def config(**changes: object) -> PatchKNNConfig:
    base: dict[str, object] = {"shorter_side": MODEL, "augment_rotations": False, "masking": "off",
                               "tiling": "on", "tile_overlap": 0.25}
    return PatchKNNConfig.from_dict({**base, **changes})


@pytest.fixture(scope="module")
def backbone() -> DinoBackbone:
    torch.manual_seed(0)
    return create_backbone("vit_small_patch14_dinov2", state_dict=None, blocks=(2,), device="cpu")


@pytest.fixture(scope="module")
def frames() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1)
    return {"train": [stripes(rng) for _ in range(3)], "good": [stripes(rng) for _ in range(3)]}


@pytest.fixture(scope="module")
def tiled(backbone: DinoBackbone, frames: dict[str, list[np.ndarray]]) -> PatchKNN:
    detector = PatchKNN(backbone=backbone, config=config())
    detector.fit(frames["train"])
    return detector


# ----------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize(("height", "width", "tile_size", "overlap"),
                         [(224, 224, None, 0.25), (2048, 2448, None, 0.25), (300, 500, 112, 0.5), (40, 900, None, 0.0)])
def test_layout_covers_the_frame_grid_with_tiles_at_the_model_resolution(
        height: int, width: int, tile_size: int | None, overlap: float) -> None:
    cfg = PatchKNNConfig(shorter_side=MODEL, tiling="on", tile_size=tile_size, tile_overlap=overlap)
    layout = tile_layout(height, width, shorter_side=MODEL, tile_size=cfg.tile_pixels, overlap=overlap)
    gh, gw = layout.grid
    assert (gh * 14, gw * 14) == layout.geo.crop
    cells = MODEL // 14
    assert layout.tile == (min(cells, gh), min(cells, gw))
    if tile_size is None and min(height, width) >= MODEL:   # native resolution: no resize at all
        assert layout.geo.resized == (height, width)
    if min(height, width) < cfg.tile_pixels:           # smaller than a tile: up to the model's resolution
        assert min(layout.geo.resized) == MODEL and min(layout.tile) == cells
    covered = np.zeros(layout.grid, int)
    th, tw = layout.tile
    for r, c in layout.origins:
        assert 0 <= r <= gh - th and 0 <= c <= gw - tw
        covered[r : r + th, c : c + tw] += 1
    assert covered.min() >= 1                          # every cell of the frame is scored
    rows = sorted({r for r, _ in layout.origins})
    for a, b in zip(rows, rows[1:], strict=False):     # neighbours share at least the asked overlap
        assert th - (b - a) >= int(overlap * th)


def test_cut_and_stitch_put_every_tile_back_in_its_place() -> None:
    layout = tile_layout(224, 280, shorter_side=MODEL, tile_size=MODEL, overlap=0.25)
    image = torch.arange(224 * 280, dtype=torch.float32).reshape(1, 1, 224, 280)
    tiles = cut_tiles(image, layout)
    assert tiles.shape == (layout.n_tiles, 1, 56, 56)
    per_cell = tiles.reshape(1, layout.n_tiles, 4, 14, 4, 14).mean(dim=(3, 5))   # (B, T, th, tw)
    truth = image.reshape(16, 14, 20, 14).mean(dim=(1, 3))
    for blend in ("mean", "max"):
        torch.testing.assert_close(stitch(per_cell, layout, blend=blend)[0], truth)
    overlapping = torch.zeros(1, layout.n_tiles, 4, 4)
    overlapping[0, 0] = 1.0                              # one tile says 1, its neighbours 0
    assert stitch(overlapping, layout, blend="max")[0, 3, 3] == 1.0
    assert 0.0 < float(stitch(overlapping, layout, blend="mean")[0, 3, 3]) < 1.0


def test_rotating_a_square_tile_by_90_degrees_is_exact_and_45_keeps_its_size() -> None:
    tiles = torch.arange(2 * 3 * 28 * 28, dtype=torch.float32).reshape(2, 3, 28, 28)
    expected = np.rot90(tiles.numpy(), k=1, axes=(2, 3))
    np.testing.assert_array_equal(rotate_tiles(tiles, 90.0).numpy(), expected)
    assert rotate_tiles(tiles, 45.0).shape == tiles.shape
    assert rotate_tiles(tiles, 0.0) is tiles


# ----------------------------------------------------------------------------------------- detection


def test_tiling_finds_a_3_pixel_defect_that_the_untiled_detector_averages_away(
        backbone: DinoBackbone, tiled: PatchKNN, frames: dict[str, list[np.ndarray]]) -> None:
    bad = with_defect(frames["good"][0])
    spot = np.zeros((SIZE, SIZE), bool)
    spot[DEFECT[0] - 14 : DEFECT[0] + 17, DEFECT[1] - 14 : DEFECT[1] + 17] = True   # the defect's patch and a ring

    found = tiled.predict([bad, *frames["good"]])
    assert tiled.tiling_active
    y, x = np.unravel_index(np.argmax(found.anomaly_map[0]), (SIZE, SIZE))
    assert spot[y, x], f"tiled map's max at {(y, x)}, not on the defect at {DEFECT}"
    good_max = float(found.pred_score[1:].max())
    assert found.pred_score[0] > 1.3 * good_max, found.pred_score

    untiled = PatchKNN(backbone=backbone, config=config(tiling="off"))
    untiled.fit(frames["train"])
    missed = untiled.predict([bad, *frames["good"]])
    assert not untiled.tiling_active
    y, x = np.unravel_index(np.argmax(missed.anomaly_map[0]), (SIZE, SIZE))
    assert not spot[y, x], "the untiled detector at the model's resolution was expected to miss the defect"
    assert missed.pred_score[0] < 1.1 * float(missed.pred_score[1:].max()), missed.pred_score


def test_a_good_frame_has_no_seams_at_the_tile_borders(tiled: PatchKNN, frames: dict[str, list[np.ndarray]]) -> None:
    """The stitched map of a good frame is no higher where tiles meet than inside them (bound: 15 %)."""
    layout = tiled._tiles.layout(SIZE, SIZE)
    maps = tiled.predict(frames["good"]).anomaly_map
    borders = _border_mask(layout)
    for amap in maps:
        near, inside = float(amap[borders].mean()), float(amap[~borders].mean())
        assert near <= 1.15 * inside, (near, inside)
        assert float(amap[borders].max()) <= 1.15 * float(amap[~borders].max())


def _border_mask(layout: TileLayout) -> np.ndarray:
    """Pixels within one patch of an interior tile edge."""
    mask = np.zeros(layout.geo.frame, bool)
    p = layout.patch_size
    th, tw = layout.tile
    gh, gw = layout.grid
    for r, c in layout.origins:
        for edge in (r, r + th):
            if 0 < edge < gh:
                mask[max(edge * p - p, 0) : edge * p + p] = True
        for edge in (c, c + tw):
            if 0 < edge < gw:
                mask[:, max(edge * p - p, 0) : edge * p + p] = True
    return mask


def _part(rng: np.random.Generator, y: int, x: int) -> np.ndarray:
    """An aligned part: stripes with one bright component (a 24-px square with a dark ring) at (y, x)."""
    frame = stripes(rng)
    frame[y : y + 24, x : x + 24] = 230
    cv2.circle(frame, (x + 12, y + 12), 7, (30, 30, 30), thickness=2)
    return frame


def test_per_position_bank_finds_a_part_moved_to_another_tile(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(3)
    # tiles start every 3 cells (42 px): the component sits at the same place within its tiles when moved,
    # so a shared bank has seen exactly those patches, and only the tile position is new
    train = [_part(rng, 42, 42) for _ in range(3)]
    goods = [_part(rng, 42, 42) for _ in range(3)]
    moved = _part(rng, 126, 168)                        # the component in tiles that never hold it
    margins = {}
    for bank in ("per_position", "shared"):
        detector = PatchKNN(backbone=backbone, config=config(tile_bank=bank))
        detector.fit(train)
        scores = detector.predict([moved, *goods]).pred_score
        margins[bank] = float(scores[0] / scores[1:].max())
    assert margins["per_position"] > 1.5, margins       # found
    assert margins["shared"] < 1.2, margins             # a shared bank holds the component: looks normal


def test_per_position_bank_refuses_a_frame_of_another_size(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=config(tile_bank="per_position"))
    detector.fit([stripes(rng, 112) for _ in range(2)])
    with pytest.raises(ValueError, match=r"taught on frames of 112x112 px; a frame of 140x140 px"):
        detector.predict(stripes(rng, 140))


def test_per_position_coreset_keeps_every_tile_position(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=config(tile_bank="per_position", max_bank_size=40))
    detector.fit([stripes(rng, 112) for _ in range(2)])
    n_tiles = detector._tiles.n_tiles
    assert detector.bank_size <= 40
    counts = torch.bincount(detector.bank_tile, minlength=n_tiles)
    assert (counts > 0).all() and bool((detector.bank_tile[1:] >= detector.bank_tile[:-1]).all())
    assert np.isfinite(detector.predict(stripes(rng, 112)).pred_score).all()


def test_batched_predict_and_features_follow_the_tiled_grid(tiled: PatchKNN,
                                                            frames: dict[str, list[np.ndarray]]) -> None:
    batch = [with_defect(frames["good"][0]), *frames["good"][1:]]
    together = tiled.predict(batch, batch_size=3, with_features=True)
    for i, frame in enumerate(batch):
        alone = tiled.predict(frame, batch_size=1)
        np.testing.assert_allclose(together.pred_score[i], alone.pred_score[0], rtol=1e-5)
        np.testing.assert_allclose(together.anomaly_map[i], alone.anomaly_map[0], rtol=1e-4, atol=1e-6)
    side = tiled.scoring_shorter_side(SIZE, SIZE)
    assert side == SIZE                                  # native resolution
    crop = frame_geometry(SIZE, SIZE, shorter_side=side).crop
    assert together.patch_features is not None
    assert together.patch_features[0].shape == (crop[0] // 14, crop[1] // 14, 384)


def test_auto_tiles_only_frames_that_would_shrink_2x(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=config(tiling="auto"))
    detector.fit([stripes(rng, 84) for _ in range(2)])   # 1.5x the model's resolution: untiled
    assert not detector.tiling_active
    detector.fit([stripes(rng, 112) for _ in range(2)])  # 2x: tiled
    assert detector.tiling_active


def test_auto_rotations_rotate_shared_tiles_but_not_a_per_position_bank(backbone: DinoBackbone) -> None:
    rng = np.random.default_rng(0)
    frames = [stripes(rng, 112) for _ in range(2)]
    shared = PatchKNN(backbone=backbone, config=config(augment_rotations="auto"))
    shared.fit(frames)
    per_position = PatchKNN(backbone=backbone, config=config(augment_rotations="auto", tile_bank="per_position"))
    per_position.fit(frames)
    assert shared.rotations_used and not per_position.rotations_used
    assert shared.bank_size == 8 * per_position.bank_size       # every tile in 8 orientations


def test_leave_one_out_scores_and_maps_of_a_tiled_fit(tiled: PatchKNN) -> None:
    assert tiled.train_scores.shape == (3,) and np.isfinite(tiled.train_scores).all()
    assert [m.shape for m in tiled.train_maps] == [(SIZE, SIZE)] * 3


@pytest.mark.parametrize(("changes", "option"), [
    ({"tiling": "yes"}, "tiling"), ({"tile_bank": "each"}, "tile_bank"), ({"tile_blend": "sum"}, "tile_blend"),
    ({"tile_size": 8}, "tile_size"), ({"tile_overlap": 0.9}, "tile_overlap"),
    ({"masking": "on"}, "masking"), ({"position_radius": 0.1}, "position_radius")])
def test_config_errors_name_the_option(changes: dict[str, object], option: str) -> None:
    with pytest.raises(ValueError, match=rf"PatchKNNConfig\.{option}"):
        config(**changes)


# ----------------------------------------------------------------------------------------- saved, export


def test_saved_tiled_model_scores_the_same_after_loading(tiled: PatchKNN, backbone: DinoBackbone,
                                                         frames: dict[str, list[np.ndarray]], tmp_path: Path) -> None:
    saved = save_detector(tiled, calibrate(tiled.train_scores), tmp_path / "m", weights=None)
    manifest = read_manifest(saved)
    assert manifest["config"]["tiling"] == "on" and manifest["state"]["tiling_active"] is True
    loaded, _, _ = load_detector(saved, backbone=backbone, device="cpu")
    assert loaded.tiling_active
    test = [with_defect(frames["good"][0])]
    np.testing.assert_array_equal(loaded.predict(test).pred_score, tiled.predict(test).pred_score)


def test_per_position_model_round_trips(backbone: DinoBackbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=config(tile_bank="per_position"))
    detector.fit([stripes(rng, 112) for _ in range(2)])
    saved = save_detector(detector, calibrate(detector.train_scores), tmp_path / "m", weights=None)
    loaded, _, _ = load_detector(saved, backbone=backbone, device="cpu")
    test = stripes(rng, 112)
    np.testing.assert_array_equal(loaded.predict(test).pred_score, detector.predict(test).pred_score)


def test_a_model_saved_before_tiling_loads_untiled(backbone: DinoBackbone, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    detector = PatchKNN(backbone=backbone, config=PatchKNNConfig(shorter_side=MODEL, augment_rotations=False))
    detector.fit([stripes(rng, 112) for _ in range(2)])
    saved = save_detector(detector, calibrate(detector.train_scores), tmp_path / "old", weights=None)
    manifest = json.loads((saved / MODEL_JSON).read_text())
    for key in ("tiling", "tile_size", "tile_overlap", "tile_bank", "tile_blend"):   # as written before them
        del manifest["config"][key]
    assert "tiling_active" not in manifest["state"]
    _resign(saved, manifest)
    loaded, _, _ = load_detector(saved, backbone=backbone, device="cpu")
    assert not loaded.tiling_active and loaded.config.tiling == "off"
    test = stripes(rng, 112)
    np.testing.assert_array_equal(loaded.predict(test).pred_score, detector.predict(test).pred_score)


def _resign(directory: Path, manifest: dict[str, object]) -> None:
    blob = (directory / MODEL_TENSORS).read_bytes()
    metadata = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]
    new_blob = save(load(blob), metadata={**metadata, "manifest_sha256": _manifest_digest(manifest)})
    (directory / MODEL_TENSORS).write_bytes(new_blob)
    manifest["tensors_sha256"] = hashlib.sha256(new_blob).hexdigest()
    (directory / MODEL_JSON).write_text(json.dumps(manifest, indent=2))


def test_onnx_export_refuses_a_tiled_model(tiled: PatchKNN, tmp_path: Path) -> None:
    from models.export import export_onnx

    with pytest.raises(ValueError, match=r"cannot export a tiled model \(config\.tiling\)"):
        export_onnx(tiled, tmp_path / "m.onnx", input_hw=(56, 56))
    assert not (tmp_path / "m.onnx").exists()
