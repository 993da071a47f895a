"""Heatmap colouring and overlays on small synthetic frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inspector.overlay import DEFAULT_COLORMAP, REGION_COLOR_BGR, heatmap_bgr, normalise_map, render_overlay
from inspector.results import DefectRegion


def _region(x: int, y: int, w: int, h: int) -> DefectRegion:
    return DefectRegion(
        x=x, y=y, width=w, height=h, area_px=w * h, area_mm2=None, max_score=1.0, mean_score=0.8
    )


def test_heatmap_ends_of_the_range() -> None:
    anomaly_map = np.array([[0.0, 0.5, 2.0, 9.0]], np.float32).repeat(14, axis=0)
    heat = heatmap_bgr(anomaly_map, vmin=0.5, vmax=2.0)
    assert heat.shape == (14, 4, 3) and heat.dtype == np.uint8
    lut = cv2.applyColorMap(np.array([[0, 255]], np.uint8), DEFAULT_COLORMAP)
    assert heat[0, 0].tolist() == heat[0, 1].tolist() == lut[0, 0].tolist()   # clipped at vmin
    assert heat[0, 2].tolist() == heat[0, 3].tolist() == lut[0, 1].tolist()   # clipped at vmax


def test_normalise_map_handles_nan_and_rejects_bad_input() -> None:
    level = normalise_map(np.array([[np.nan, 1.0], [np.inf, -np.inf]]), 0.0, 2.0)
    assert level.dtype == np.float32 and level.tolist() == [[0.0, 0.5], [1.0, 0.0]]
    with pytest.raises(ValueError, match="vmin=1.0 must be below vmax=1.0"):
        normalise_map(np.zeros((4, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"anomaly_map must be \(H, W\)"):
        normalise_map(np.zeros((4, 4, 1)), 0.0, 1.0)


def test_overlay_tints_only_anomalous_pixels(rng: np.random.Generator) -> None:
    image = rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)
    original = image.copy()
    anomaly_map = np.zeros((56, 56), np.float32)
    anomaly_map[20:30, 20:30] = 3.0
    out = render_overlay(image, anomaly_map, vmin=0.5, vmax=2.0)
    np.testing.assert_array_equal(image, original)                       # input untouched
    np.testing.assert_array_equal(out[:20], image[:20])                  # below vmin: the frame itself
    hot = cv2.applyColorMap(np.array([[255]], np.uint8), DEFAULT_COLORMAP)[0, 0].astype(np.float32)
    expected = (image[25, 25].astype(np.float32) * 0.55 + hot * 0.45).round()
    np.testing.assert_allclose(out[25, 25], expected, atol=1)


def test_overlay_resizes_a_smaller_map_and_draws_regions() -> None:
    image = np.full((56, 84, 3), 128, np.uint8)
    anomaly_map = np.zeros((4, 6), np.float32)            # model resolution, 14 px per cell
    anomaly_map[1, 2] = 5.0
    out = render_overlay(image, anomaly_map, vmin=1.0, vmax=5.0, regions=[_region(28, 14, 14, 14)], alpha=0.6)
    assert out.shape == (56, 84, 3)
    assert out[14, 28].tolist() == list(REGION_COLOR_BGR)   # the outline
    assert out[0, 0].tolist() == [128, 128, 128]
    assert out[21, 35].tolist() != [128, 128, 128]        # the hot cell, blended


def test_overlay_without_a_map_draws_regions_only() -> None:
    image = np.zeros((56, 56, 3), np.uint8)
    out = render_overlay(image, None, vmin=0.0, vmax=1.0, regions=[_region(5, 5, 10, 10)])
    assert out[5, 5].tolist() == list(REGION_COLOR_BGR) and out[10, 10].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("image", "alpha", "match"),
    [
        (np.zeros((56, 56), np.uint8), 0.5, r"image_bgr must be \(H, W, 3\) uint8"),
        (np.zeros((56, 56, 3), np.float32), 0.5, r"image_bgr must be \(H, W, 3\) uint8"),
        (np.zeros((56, 56, 3), np.uint8), 1.5, r"alpha must be in \[0, 1\], got 1.5"),
    ],
)
def test_overlay_rejects_bad_arguments(image: np.ndarray, alpha: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_overlay(image, np.zeros((56, 56), np.float32), vmin=0.0, vmax=1.0, alpha=alpha)
