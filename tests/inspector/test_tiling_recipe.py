"""A recipe that tiles its frames (detector.options tiling, issue 11): taught, saved, inspected one by one
and in batches with the same scores, its 3-pixel defect found and located on the full-size frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inspector.recipe import load_recipe
from inspector.results import Verdict
from inspector.station import Station
from inspector.teach import run_to_end, teach
from tests.conftest import write_recipe
from tests.helpers.images import write_images

SIZE = 168  # 2x the recipe's 84 px: tiles of 84 px at native resolution
DEFECT = (100, 62)  # top-left (y, x) of the 3 x 3 px defect


def stripes(rng: np.random.Generator) -> np.ndarray:
    """Horizontal stripes of period 2 px with fine noise: (SIZE, SIZE, 3) uint8 BGR."""
    base = np.where((np.arange(SIZE) % 2 == 0)[:, None], 90.0, 166.0) * np.ones((1, SIZE))
    return np.clip(base + rng.normal(0.0, 8.0, (SIZE, SIZE)), 0, 255).astype(np.uint8)[..., None].repeat(3, axis=2)


def test_a_tiled_recipe_is_taught_saved_and_finds_a_3_pixel_defect(tmp_path: Path, tiny_weights_file: Path) -> None:
    path = write_recipe(tmp_path / "recipe", tiny_weights_file, name="tiled_part")
    written = path.read_text(encoding="utf-8")
    text = written.replace("patch_pooling: 1}", 'patch_pooling: 1, tiling: "on", tile_overlap: 0.25}')
    assert text != written, "the recipe's options were not found"
    path.write_text(text, encoding="utf-8")
    rng = np.random.default_rng(0)
    good = write_images(tmp_path / "good", [stripes(rng) for _ in range(5)])
    recipe = load_recipe(path)
    report = run_to_end(teach(recipe, good[0].parent, device="cpu"))
    assert "tiling: 9 tiles of 84 px (native resolution, overlap 0.25) per 168x168 frame, shared bank" in (
        report.summary_lines()), report.summary_lines()

    version = recipe.model_versions()[-1]
    saved = json.loads((recipe.model_dir() / version / "model.json").read_text(encoding="utf-8"))
    assert saved["config"]["tiling"] == "on" and saved["state"]["tiling_active"] is True

    station = Station.load(recipe, device="cpu")
    bad = stripes(rng)
    y, x = DEFECT
    bad[y : y + 3, x : x + 3] = np.array([[90, 166, 90]] * 3, np.uint8)[..., None]   # stripes turned 90 degrees
    frames = [bad, stripes(rng), stripes(rng)]
    batched = station.inspect_images(frames, batch_size=3)
    alone = [station.inspect_image(f) for f in frames]
    for a, b in zip(batched, alone, strict=True):
        assert a.score is not None and b.score is not None
        assert abs(a.score - b.score) <= 1e-5 * max(1.0, abs(b.score))
    assert batched[0].verdict is not Verdict.PASS, (batched[0].score, station.thresholds)
    assert batched[0].score is not None and batched[1].score is not None and batched[2].score is not None
    assert batched[0].score > max(batched[1].score, batched[2].score)
    assert batched[0].anomaly_map is not None and batched[0].anomaly_map.shape == (SIZE, SIZE)
    assert any(r.x <= x + 3 and x <= r.x + r.width and r.y <= y + 3 and y <= r.y + r.height
               for r in batched[0].regions), batched[0].regions
